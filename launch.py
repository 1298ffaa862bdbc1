"""Start Cogumi Chat: `python launch.py` (see --help). The composition root: it reads the command
line, makes sure the model files are on disk and verified, builds the engine, memory, chat service
and UI, and launches Gradio. With no real model set on disk it builds and uses the demo set."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import ipaddress
import logging
import math
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline by default: no phoning home

from models.errors import ModelFileError  # noqa: E402
from models.manifest import CUSTOM, MANIFEST_PATH, Profile, data_dir, get_profile, models_dir, user_profile  # noqa: E402
from models.store import Store  # noqa: E402

log = logging.getLogger("cogumi")
SPACES_PROFILE = "qwen2.5-1.5b"  # a CPU Space: the small profile
DEFAULT_MAX_TOKENS = 256  # ChatSettings.max_tokens, named here so --help does not import the app (3 s)
MAX_CONVERSATIONS = 64  # KV sequences: conversations x 4 routes, and llama.cpp allows 256
DEFAULT_N_CTX = 4096  # a profile without its own n_ctx (models.manifest.user_profile writes this too)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Cogumi Chat: a local chat app with a visual router.")
    p.add_argument("--host", default=None,
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 on a HuggingFace Space)")
    p.add_argument("--port", type=_port, default=None, help="port (default 7860, or $PORT on a Space)")
    p.add_argument("--share", action="store_true", help="also publish a temporary public gradio.live link")
    p.add_argument("--profile", default=None,
                   help="model set from the manifest, downloaded when missing (default: demo; on a Space $COGUMI_PROFILE "
                        f"or {SPACES_PROFILE})")
    p.add_argument("--manifest", type=Path, default=None, help="profiles file (default models/manifest.json)")
    p.add_argument("--model", type=Path, default=None, metavar="BASE.gguf",
                   help="run a model file you have (.gguf or .gguf.zst) instead of a profile")
    p.add_argument("--draft", type=Path, default=None, metavar="DRAFT.gguf", help="with --model: a draft model")
    p.add_argument("--modifier", action="append", default=[], metavar="NAME=FILE.gguf",
                   help="with --model: a LoRA modifier, NAME one of code, reasoning, automation (repeatable)")
    p.add_argument("--demo", action="store_true", help="use the demo model set, whatever --profile says")
    p.add_argument("--models-dir", type=Path, default=None, help="model cache (default: $COGUMI_DATA_DIR/model-cache)")
    p.add_argument("--db", type=_file_path, default=None,
                   help="session database (default: $COGUMI_DATA_DIR/sessions.db)")
    p.add_argument("--no-draft", action="store_true", help="do not load the draft model (no speculative decoding)")
    p.add_argument("--verify", action="store_true", help="rehash cached model files before use")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument("--n-ctx", type=_positive_int, default=None, help="context window in tokens (default: the profile's)")
    p.add_argument("--gpu-layers", type=_gpu_layers, default=None,
                   help="layers to offload to the GPU, -1 for all (default: all on Apple Silicon, 0 elsewhere; 0 turns "
                        "Metal off)")
    p.add_argument("--threads", type=_thread_count, default=None, help="CPU threads for llama.cpp (default: half the cores)")
    p.add_argument("--batch-threads", type=_thread_count, default=None, metavar="N",
                   help="CPU threads for prompt batches, the router's cores included (default: twice --threads, at "
                        "most the cores; --threads on a GPU)")
    p.add_argument("--conversations", type=_conversations, default=None, metavar="N",
                   help="conversations kept in the KV cache at once, each costing one context of memory per "
                        "route (default 1, or 4 on a Space where visitors take turns)")
    p.add_argument("--tau-p", type=_perplexity, default=None, metavar="VALUE",
                   help="the router's perplexity threshold, as python -m router.calibrate measures it (default: the "
                        "profile's; your own --model files have none: see the README)")
    p.add_argument("--max-tokens", type=_positive_int, default=None, metavar="N",
                   help=f"longest reply in tokens; the context keeps this much room for it, at most a quarter "
                        f"of the window (default: "
                        f"{DEFAULT_MAX_TOKENS}, ChatSettings.max_tokens)")
    return p.parse_args(_negative_numbers_as_values(sys.argv[1:] if argv is None else argv))


def _negative_numbers_as_values(argv: list[str]) -> list[str]:
    """`--tau-p -inf` as `--tau-p=-inf`: argparse takes a negative number it does not know for a flag ("-1" it knows,
    "-inf" and "-1e3" not) and said only "expected one argument" (QA 30 #8); as a value, its check says what is
    wrong with it."""
    glued: list[str] = []
    for arg in argv:
        if glued and glued[-1].startswith("--") and "=" not in glued[-1] and arg.startswith("-") and _is_float(arg):
            glued[-1] += f"={arg}"
        else:
            glued.append(arg)
    return glued


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def bounded(kind, ok, says: str):
    """An argparse type: the text read as `kind`, refused with `says` and the text unless ok(value) (argparse's
    own refusal of a text that is not a number names this function: "invalid _port value")."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"{says}, not {text}")
        return value
    return parse


_positive_int = bounded(int, lambda v: v >= 1, "a whole number, at least 1")
_gpu_layers = bounded(int, lambda v: v >= -1, "a whole number of layers, or -1 for all of them")  # llama.cpp's -1
_port = bounded(int, lambda v: 1 <= v <= 65_535, "a port is 1 to 65,535")
# exp(a mean negative log-likelihood): above 1, and finite (NaN fails the test too)
_perplexity = bounded(float, lambda v: 1 < v < math.inf, "a perplexity is a finite number more than 1")


def _file_path(text: str) -> Path:
    if not text.strip():  # Path("") is ".", the folder the app runs in (QA 29: a traceback)
        raise argparse.ArgumentTypeError("the path of a file, not an empty text")
    return Path(text)


def _thread_count(text: str) -> int:
    """llama.cpp's threads spin while they wait: more than the machine's logical cores only take turns
    (999 made a reply of 0.3 s take 136 s)."""
    value, cores = _positive_int(text), os.cpu_count() or 1
    if value > cores:
        raise argparse.ArgumentTypeError(f"at most {cores} (this machine's logical cores), not {value}")
    return value


def _conversations(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_CONVERSATIONS:
        raise argparse.ArgumentTypeError(f"at most {MAX_CONVERSATIONS} (each takes a KV sequence per route, and "
                                         f"llama.cpp has 256), not {value}")
    return value


def cannot_listen(host: str, port: int) -> str | None:
    """Why the app could not listen on host:port, or None (checked before the models load, not after).
    Each reason its own: every failure once read "port … is in use"."""
    if ":" in host:  # Gradio builds its URL as host:port, which an IPv6 address breaks (after the models load)
        return (f"--host {host}: an IPv6 address, which Gradio cannot serve on; use 127.0.0.1 (this machine "
                f"only) or 0.0.0.0 (every network).")
    try:
        address = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    except socket.gaierror:
        return f"--host {host}: no such host; use 127.0.0.1 (this machine only) or 0.0.0.0 (every network)."
    with socket.socket(socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"port {port} is in use on {host}: another program (or another Cogumi Chat) listens there; "
                        f"start with --port OTHER.")
            if exc.errno == errno.EADDRNOTAVAIL:
                return (f"--host {host}: not an address of this machine; use 127.0.0.1 (this machine only) or "
                        f"0.0.0.0 (every network).")
            if exc.errno == errno.EACCES:
                return f"port {port}: ports below 1024 need administrator rights; start with --port 7860 or above."
            return f"cannot listen on {host}:{port} ({exc.strerror or exc})."
    return None


def prepare_models(profile: Profile, store: Store, verify: bool = False) -> tuple[dict[str, Path], dict[str, str]]:
    """Verified GGUF paths by name (base, draft, modifiers), building the demo set if needed, and
    the modifiers that could not be had with the reason. A bad base or draft stops the app; a bad
    modifier only leaves that modifier out."""
    if profile.demo and not all(store.is_ready(profile.name, f) or store.source_path(profile.name, f).is_file()
                                for f in profile.files):
        from models.demo import build_demo_set

        log.info("building the demo model set in %s", store.folder(profile.name))
        try:
            build_demo_set(store.folder(profile.name))
        except OSError as exc:  # a folder where a file goes, a read-only or full disk
            where = exc.filename2 or exc.filename or store.folder(profile.name)
            raise ModelFileError(f"{where}: could not write the demo model set ({exc.strerror or exc}); move it "
                                 f"aside, free disk space, or choose another folder with --models-dir.") from exc
    paths, failed = {}, {}
    for f in profile.files:
        if f.role == "modifier" and f.sha256 is None and not f.source and not store.source_path(profile.name, f).exists():
            failed[f.name] = (f"not installed: no public {f.name} LoRA exists for this base; put one at "
                              f"{store.source_path(profile.name, f)} or start with --model BASE --modifier {f.name}=FILE")
            continue
        try:
            paths[f.name] = store.ensure(profile.name, f, verify=verify)
        except ModelFileError as exc:
            if f.role != "modifier":
                from models.hub import fetch_command

                missing = [f"{g.file} ({fetch_command(profile.name, g, store.hub_cache())})"
                           for g in profile.files if g is not f and store.needs_download(profile.name, g)]
                also = f" Also not on disk yet: {'; '.join(missing)}." if missing else ""
                raise ModelFileError(f"{exc}{also}") from exc
            failed[f.name] = str(exc)
    return paths, failed


def as_given(message: str, profile: Profile, store: Store) -> str:
    """An error about a file of your own (--model, --draft, --modifier), with the file named as you gave it and its
    flag. A .gguf.zst is checked on its decompressed copy in the model cache: the error named that copy, advised
    --verify (which decompresses the same file again) and --modifier with the copy's name, and left the copy
    (QA 19); it is removed."""
    from models.engine import IN_THE_CACHE
    from models.store import REDO

    for f in profile.files:
        flag = {"base": "--model", "draft": "--draft"}.get(f.name, f"--modifier {f.name}")
        source, copy = Path(f.file), store.model_path(profile.name, f)
        refused = copy != source and copy.name in message  # (its name alone: "pass it with --modifier NAME=…")
        for named in (f"{f.name} model {copy}", f"{f.name} modifier {copy}"):
            message = message.replace(named, f"{flag} {source}")
        if refused:
            for leftover in (copy, copy.with_name(copy.name + ".sha256"), copy.with_name(copy.name + ".source")):
                leftover.unlink(missing_ok=True)
            message = message.replace(str(copy), str(source)).replace(copy.name, str(source))
        if str(source) in message and flag not in message:
            message = message.replace(str(source), f"{flag} {source}", 1)
    return (message.replace(f" {IN_THE_CACHE}; else copy or download it again.", " Copy or download it again.")
            .replace(f" {IN_THE_CACHE}.", "")  # a file of your own is no copy in the model cache
            .replace(f" {REDO}", " Copy or download it again."))  # nor a profile's or the demo set's to delete


def refuse_own_modifiers(args: argparse.Namespace, failed: dict[str, str]) -> None:
    """A --modifier file named on the command line that cannot be used stops the start, as a bad --model
    does: it was asked for by name. (A profile's modifier that fails is left out, with its reason shown.)"""
    for name, reason in failed.items():
        if args.model:
            raise ModelFileError(f"--modifier {name}: {reason} Fix the file, or leave out --modifier {name}.")


def build_router(engine, profile: Profile, max_tokens: int, tau_p: float | None = None):
    """The router, with the base model's scoring handed to its perplexity signal and the
    thresholds from the profile. The encoder runs on one thread: one message is too small to share
    out (2.22 ms p50 on one thread of the Intel VM, 2.14 on two), and a second thread would wait
    spinning on a core llama.cpp is prefilling on at the same time."""
    from router.decision import Thresholds
    from router.embeddings import Embedder
    from router.perplexity import Perplexity
    from router.router import Router

    thresholds = Thresholds.from_settings(profile.settings)
    if tau_p is not None:  # measured by router.calibrate --model (or --profile) on this base
        thresholds = dataclasses.replace(thresholds, tau_p=tau_p, calibrated=True)
    elif not thresholds.calibrated and profile.name == CUSTOM:
        log.warning("your base model has no calibrated perplexity threshold: using %.1f; measure one with "
                    "python -m router.calibrate --model BASE.gguf, then start with --tau-p VALUE", thresholds.tau_p)
    elif not thresholds.calibrated:
        log.warning("profile %s has no calibrated perplexity threshold: using %.1f; run python -m router.calibrate "
                    "--profile %s", profile.name, thresholds.tau_p, profile.name)
    return Router(Perplexity(engine.score, max_tokens=max_tokens), thresholds, Embedder(threads=1))


def choose_profile(args: argparse.Namespace, space: bool) -> Profile:
    """--model files, else --demo, else --profile, else (on a Space) $COGUMI_PROFILE or the small
    profile, else the demo set: only a plain start falls back to the demo."""
    if args.model:
        other = "--demo" if args.demo else "--profile" if args.profile else None
        if other:  # QA 29: --model won in silence
            raise ModelFileError(f"--model and {other} are two choices of model: give one of them.")
        modifiers = {}
        for item in args.modifier:
            name, _, path = item.partition("=")
            if name not in ("code", "reasoning", "automation") or not path:
                raise ModelFileError(f"--modifier {item!r}: write NAME=FILE.gguf with NAME code, reasoning or automation")
            if name in modifiers:
                raise ModelFileError(f"--modifier {name} is given twice ({modifiers[name]} and {path}): give each of "
                                     f"code, reasoning and automation once.")
            if not Path(path).is_file():  # a typo: not a modifier to leave out quietly
                what = "is a directory, not a LoRA GGUF file" if Path(path).is_dir() else "file not found"
                raise ModelFileError(f"--modifier {name}: {path}: {what}. Fix the path, or leave out --modifier {name}.")
            if Path(args.model).is_file() and os.path.samefile(path, args.model):  # QA 27: named with both flags
                raise ModelFileError(f"--modifier {name}: {path} is the --model file itself: a modifier is a LoRA "
                                     f"adapter made for that base. Fix the path, or leave out --modifier {name}.")
            modifiers[name] = Path(path)
        return user_profile(args.model, args.draft, modifiers)
    if args.draft or args.modifier:
        raise ModelFileError("--draft and --modifier go with --model; a profile names its own files")
    setting = os.environ.get("COGUMI_PROFILE", "").strip()  # cleared in a Space's settings, it is set and empty
    from_setting = space and not (args.demo or args.profile) and bool(setting)
    name = "demo" if args.demo else args.profile or ((setting or SPACES_PROFILE) if space else "demo")
    manifest = args.manifest or MANIFEST_PATH
    if not manifest.is_file():
        raise ModelFileError(f"{manifest}: profiles file (--manifest) not found.")
    try:
        return get_profile(name, manifest)
    except ModelFileError as exc:  # one typed into a Space's settings is named as such (QA 24)
        if not from_setting:
            raise
        raise ModelFileError(f"COGUMI_PROFILE (the Space's setting): {exc}") from exc


def on_space() -> bool:
    """Running as a HuggingFace Space: bind all interfaces on the port Spaces gives, keep data in
    the persistent /data volume when the Space has one, and give each visitor their own sessions."""
    if not os.environ.get("SPACE_ID"):
        return False
    if "COGUMI_DATA_DIR" not in os.environ and space_volume_unusable() is None:
        # made by open_memory, which says if it cannot be
        os.environ["COGUMI_DATA_DIR"] = str(space_volume() / "cogumi")
    return True


def space_volume() -> Path:
    """Where a Space mounts its persistent storage, when it has some: all else is wiped at a restart."""
    return Path(os.environ.get("COGUMI_SPACES_PERSISTENT_DIR", "/data"))


def space_volume_unusable() -> tuple[str, str] | None:
    """Why the Space's persistent storage cannot hold the data, and what its owner can do; None if it can."""
    volume = space_volume()
    if not volume.is_dir():
        return "it has no persistent storage", "Its owner can add some in the Space's settings."
    if not os.access(volume, os.W_OK):
        return (f"its persistent storage (`{volume}`) is not writable",
                "Its owner can check the storage in the Space's settings.")
    return None


def space_storage_warning() -> str | None:
    """On a Space, what its owner (in the log) and its visitors (on the page) are told when the chats
    will not outlive a restart of the Space, or None when they are on its persistent storage."""
    volume, data = space_volume(), data_dir()
    if data.resolve().is_relative_to(volume.resolve()):
        return None
    why, fix = space_volume_unusable() or (
        f"the data folder (`{data}`) is outside its persistent storage",
        f"Its owner can unset `COGUMI_DATA_DIR` or set it to a folder in `{volume}`.")
    return f"Chats here are kept only until this Space restarts: {why}. {fix}"


def browser_state_secret() -> str:
    """The key each visitor's id is encrypted with in their browser, kept in the data directory so
    visitors keep their sessions across restarts of the Space."""
    from app.memory import SessionStoreError

    path = data_dir() / "browser-state.secret"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(16))
            path.chmod(0o600)
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SessionStoreError(f"{path}: the key visitors' ids are kept under in their browsers cannot be read or "
                                f"made ({getattr(exc, 'strerror', None) or exc}); remove it (a new one is made) or "
                                f"make its folder writable, and start again.") from exc


def exposure_warnings(host: str, port: int, share: bool, space: bool = False) -> list[str]:
    """What these flags open to other people, said before the app serves anything. A Space binds
    all interfaces by design (each visitor sees only their own sessions)."""
    warnings = []
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        loopback = False
    if not loopback and not space:
        warnings.append(f"--host {host}: other machines that can reach this one on port {port} can use this chat, "
                        f"its model and every conversation stored in sessions.db; there is no login.")
    if share:
        warnings.append("--share publishes this chat on a public gradio.live URL for up to a week: anyone with the "
                        "link can use it, its model and every conversation stored in sessions.db; there is no login.")
    return warnings


def configure_logging() -> None:
    """The app's own INFO lines on the terminal; the libraries' warnings only: at INFO, Gradio's requests to
    itself (httpx) and torch's cache figures as the interpreter exits were printed as if they were the app's."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for ours in ("cogumi", "app", "models", "router"):
        logging.getLogger(ours).setLevel(logging.INFO)
    logging.getLogger("huggingface_hub").propagate = False  # it prints through a handler of its own (QA 24: twice)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    # Until the chat is up (stop_gracefully), SIGTERM stops it as Ctrl-C does: the exception unwinds the
    # start, and a model file half decompressed or downloaded is removed on the way (Python's default
    # SIGTERM left it, and exited 143). SIGINT too where it came ignored (`python launch.py &` in a script):
    # the start went on regardless, and the chat's own handler stopped it once up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = parse_args(argv)
    space = on_space()
    args.host = args.host or ("0.0.0.0" if space else "127.0.0.1")
    args.port = args.port or int(os.environ.get("PORT", 7860) if space else 7860)
    storage_warning = space_storage_warning() if space else None
    if space:
        log.info("HuggingFace Space %s: binding %s:%d, data in %s", os.environ["SPACE_ID"], args.host, args.port,
                 data_dir())
    if storage_warning:
        log.warning(storage_warning)
    unavailable = cannot_listen(args.host, args.port)
    if unavailable:
        print(f"error: {unavailable}", file=sys.stderr)
        return 2
    # Before any model is read: a data folder, sessions.db or a Space's browser-state key that cannot be
    # used is said at once, not after a download and a load of minutes.
    from app.memory import SessionStoreError

    try:
        memory = open_memory(args.db, f"http://{'127.0.0.1' if args.host == '0.0.0.0' else args.host}:{args.port}/")
        state_secret = browser_state_secret() if space else None
    except SessionStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = startup = None
    try:
        profile = choose_profile(args, space)
        if args.no_draft:
            profile = dataclasses.replace(profile, files=tuple(f for f in profile.files if f.role != "draft"))
        store = Store(models_dir(args.models_dir))
        # Only when files must be downloaded first. An error return below ends the process, and the
        # page with it (Gradio serves it on a daemon thread); the chat closes it to take its address.
        startup = startup_page(args, profile, store)
        with startup.hub_retries_shown() if startup else contextlib.nullcontext():
            paths, failed = prepare_models(profile, store, verify=args.verify)
        refuse_own_modifiers(args, failed)
        if startup:
            startup.progress.set_stage("Loading the model into memory…")
        from models.engine import Engine

        engine = Engine(paths["base"], n_ctx=args.n_ctx or profile.settings.get("n_ctx", DEFAULT_N_CTX), n_threads=args.threads,
                        n_gpu_layers=args.gpu_layers, batch_threads=args.batch_threads,
                        modifiers={f.name: (paths[f.name], f.scale) for f in profile.modifiers if f.name in paths},
                        draft=None if args.no_draft else paths.get("draft"),
                        conversations=args.conversations or (4 if space else 1))
        engine.check_output()  # weights whose output is not a number: a damaged file whose format is whole
        if args.n_ctx and engine.n_ctx < args.n_ctx:
            log.warning("--n-ctx %s is more than %s was trained for: using %s tokens", f"{args.n_ctx:,}",
                        paths["base"].name, f"{engine.n_ctx:,}")
        refuse_own_modifiers(args, engine.modifiers.failed)
        if startup:
            startup.progress.set_stage("Starting the chat…")  # the page now waits for the chat to take its place
    except ModelFileError as exc:
        return failed_start(as_given(str(exc), profile, store) if args.model and store else str(exc), startup)

    from app.chat import ChatService, ChatSettings
    from app.ui import DEMO_BANNER, PAGE_CSS, PAGE_JS, build_ui, page_head

    settings = ChatSettings() if args.max_tokens is None else ChatSettings(max_tokens=args.max_tokens)
    if args.max_tokens is not None and settings.max_tokens > engine.n_ctx:  # given, not the default (QA 23 #4: it named 256)
        log.warning("--max-tokens %s is more than the context window (%s tokens) holds: a reply ends where the window "
                    "is full", f"{settings.max_tokens:,}", f"{engine.n_ctx:,}")
    too_small = context_too_small(engine, settings, profile.settings.get("n_ctx", DEFAULT_N_CTX))
    if too_small:
        return failed_start(too_small, startup)
    failed.update(engine.modifiers.failed)
    for name, reason in failed.items():
        log.warning("modifier %s is not available: %s", name, reason)
    from router.heads import HeadFileError

    try:
        router = build_router(engine, profile, settings.max_tokens, args.tau_p)
    except HeadFileError as exc:
        return failed_start(str(exc), startup)
    service = ChatService(engine, memory, settings, unavailable=failed, router=router)
    banner = "\n\n".join(filter(None, [DEMO_BANNER if profile.demo else None, storage_warning])) or None
    demo = build_ui(service, banner=banner, model_label=f"· {profile.name}",
                    per_visitor=space, state_secret=state_secret)
    for warning in exposure_warnings(args.host, args.port, args.share, space):
        log.warning(warning)
    if startup:
        startup.close()  # the chat takes over its address; the page reloads into it
    stop_gracefully(service)
    # quiet: Gradio's own lines told the person to set `share=True` in `launch()` (QA 22); a public link, asked
    # for, is still printed
    _, local_url, _ = demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, share=args.share, inbrowser=not args.no_browser and not startup,
        css=PAGE_CSS, js=PAGE_JS, head=page_head(space), quiet=True, prevent_thread_lock=True,
    )
    print(f"Cogumi Chat is running on {local_url.rstrip('/')}; Ctrl-C stops it"
          + ("" if args.share else " (--share also gives a temporary public link)"), flush=True)
    demo.block_thread()
    return 0


def open_memory(db: Path | None, url: str = ""):
    """The session store: --db, else sessions.db in the data folder, made if missing, and this app's alone
    (claim). SessionStoreError says what is wrong: read-only, locked by another program, in use by another
    Cogumi Chat, not a database, a folder that cannot be made."""
    from app.memory import LOCK_WAIT_S, Memory, SessionStoreError, held_elsewhere

    if db is None:
        try:
            data_dir().mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SessionStoreError(f"{data_dir()}: could not make the data folder ({exc.strerror or exc}); set "
                                    f"COGUMI_DATA_DIR to a folder you can write, or start with --db FILE and "
                                    f"--models-dir FOLDER (the model cache is in the data folder too).") from exc
    else:  # as the data folder is: made when missing
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SessionStoreError(f"{db.parent}: could not make the folder for --db ({exc.strerror or exc}); "
                                    f"start with --db in a folder you can write.") from exc
    path = db or data_dir() / "sessions.db"
    claim(path, url)
    if held_elsewhere(path):  # else the start stood silent for the lock's wait
        log.warning("%s: another program holds a lock on it (a database tool in the middle of a transaction?); "
                    "waiting up to %.0f s for it to let go", path, LOCK_WAIT_S)
    memory = Memory(path)
    if memory.interrupted:
        log.info("%d %s cut off by an earlier stop %s kept and marked interrupted", memory.interrupted,
                 *(("reply", "is") if memory.interrupted == 1 else ("replies", "are")))
    return memory


_CLAIMED: list = []  # the open lock files: their locks last as long as this process


def claim(path: Path, url: str) -> None:
    """Make sessions.db this app's until it exits: a lock on PATH.lock, which holds this app's pid and address.
    A second app on the same file marked the first one's streaming replies interrupted as it opened it, and the
    two then wrote to the same chats, each unaware of the other (QA 19). The lock goes with the process, however
    it ends (kill -9 too). Where there is no flock (Windows) or the folder is read-only, nothing is claimed."""
    from app.memory import SessionStoreError

    try:
        import fcntl
    except ImportError:
        return
    try:
        held = open(path.with_name(path.name + ".lock"), "a+")
    except OSError:  # a folder that cannot be written: opening sessions.db says so, in its own words
        return
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        held.seek(0)
        owner = " ".join(held.read().split()) or "its pid unknown"
        held.close()
        raise SessionStoreError(f"{path} is in use by another Cogumi Chat ({owner}): open that one, or stop it "
                                f"first, or start this one with --db OTHER.db (or another COGUMI_DATA_DIR).") from None
    held.seek(0)
    held.truncate()
    held.write(f"pid {os.getpid()}, {url}\n")
    held.flush()
    _CLAIMED.append(held)


STOP_GRACE_S = 8.0  # within the 10 s docker and a Space give between SIGTERM and SIGKILL
END_S = 1.0  # of those, for a reply told to end now to be saved with all it wrote (ChatService.end_replies)


def stop_gracefully(service) -> None:
    """SIGTERM (a Space restarting, docker stop, systemd) and Ctrl-C: a reply still streaming gets up to
    STOP_GRACE_S to end and be saved whole (its last second: told to end now, saved with every word it wrote,
    marked interrupted), then the process leaves at once (a second signal: at once).
    Python's default SIGTERM ended it as kill -9 does, and the reply lost what it wrote since its last
    save; its Ctrl-C closed Gradio and tore the interpreter down, seconds spent waiting on connections
    still open and freeing the models."""
    stopping = []

    def stop(signum, frame) -> None:
        if not stopping and service.wait_for_replies(0):
            stopping.append(signum)
            log.info("stopping: letting the reply in progress end (up to %.0f s)", STOP_GRACE_S)
            left = service.wait_for_replies(STOP_GRACE_S - END_S) and service.end_replies(END_S)
            if left:
                log.warning("stopping with %d reply(ies) unfinished: kept as far as saved, marked interrupted at "
                            "the next start", left)
            time.sleep(0.5)  # for the page: the reply's last update, its end and figures (QA: it never came)
        service.memory.close()  # sessions.db alone then holds it all, -wal and -shm gone (QA 23)
        print(f"stopped; your chats are kept in {service.memory.path}", file=sys.stderr)  # QA 22: not a word
        logging.shutdown()
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(0)  # the replies are saved and sessions.db closed: nothing else needs tearing down

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def context_too_small(engine, settings, default_n_ctx: int) -> str | None:
    """Why no message could ever fit the context (the system prompt and a one-word message, with the
    reply's room kept), or None. Every message was refused as "too long" instead."""
    need = len(engine.chat.message("system", settings.system_prompt)) + \
        len(engine.chat.message("user", "hello")) + len(engine.chat.generation_prompt())
    room = min(settings.max_tokens, engine.n_ctx // 4)
    if need + room <= engine.n_ctx:
        return None
    return (f"--n-ctx {engine.n_ctx} is too small: the system prompt and a one-word message take {need} tokens, "
            f"and {room} are kept for the reply. Start with --n-ctx {max(2 * need, need + settings.max_tokens)} "
            f"or more (room for a whole {settings.max_tokens}-token reply), or leave --n-ctx out (then "
            f"{default_n_ctx:,} tokens, or fewer if the model was trained on fewer).")


def failed_start(error: str, startup) -> int:
    """Say why the start failed, on the terminal and on the startup page if one is open (QA 24: a Space's
    visitor saw "Checking the model files…", then only that the connection was lost); the exit code."""
    print(f"error: {error}", file=sys.stderr)
    if startup:
        startup.show_failure(error)
    return 2


def startup_page(args: argparse.Namespace, profile: Profile, store: Store):
    """A page with download progress on the chat's address while files come from the Hub, so a
    visitor (a Space waking up) sees what is happening; None when nothing has to be downloaded."""
    if not any(store.needs_download(profile.name, f) for f in profile.files):
        return None
    from app.startup import StartupPage

    page = StartupPage(args.host, args.port, inbrowser=not args.no_browser)
    store.on_progress = page.progress.update
    return page


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before the chat was up: nothing to save yet
        print("stopped while starting: no chat was open, nothing to save", file=sys.stderr)
        sys.exit(0)

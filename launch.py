"""Start Cogumi Chat: `python launch.py` (see --help). The composition root: it reads the command
line, makes sure the model files are on disk and verified, builds the engine, memory, chat service
and UI, and launches Gradio. With no real model set on disk it builds and uses the demo set."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline by default: no phoning home

from models.errors import ModelFileError  # noqa: E402
from models.manifest import Profile, data_dir, get_profile, models_dir  # noqa: E402
from models.store import Store  # noqa: E402

log = logging.getLogger("cogumi")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Cogumi Chat: a local chat app with a visual router.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also publish a temporary public gradio.live link")
    p.add_argument("--profile", default="demo", help="model set from models/manifest.json (default: demo)")
    p.add_argument("--demo", action="store_true", help="use the demo model set, whatever --profile says")
    p.add_argument("--models-dir", type=Path, default=None, help="model cache (default: $COGUMI_DATA_DIR/model-cache)")
    p.add_argument("--db", type=Path, default=None, help="session database (default: $COGUMI_DATA_DIR/sessions.db)")
    p.add_argument("--no-draft", action="store_true", help="do not load the draft model (no speculative decoding)")
    p.add_argument("--verify", action="store_true", help="rehash cached model files before use")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument("--n-ctx", type=int, default=None, help="context window in tokens (default: the profile's)")
    p.add_argument("--gpu-layers", type=int, default=None,
                   help="layers to offload to the GPU (default: all on Apple Silicon, 0 elsewhere; 0 turns Metal off)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for llama.cpp (default: half the cores)")
    return p.parse_args(argv)


def prepare_models(profile: Profile, store: Store, verify: bool = False) -> tuple[dict[str, Path], dict[str, str]]:
    """Verified GGUF paths by name (base, draft, modifiers), building the demo set if needed, and
    the modifiers that could not be had with the reason. A bad base or draft stops the app; a bad
    modifier only leaves that modifier out."""
    if profile.demo and not all(store.is_ready(profile.name, f) or store.source_path(profile.name, f).is_file()
                                for f in profile.files):
        from models.demo import build_demo_set

        log.info("building the demo model set in %s", store.folder(profile.name))
        build_demo_set(store.folder(profile.name))
    paths, failed = {}, {}
    for f in profile.files:
        try:
            paths[f.name] = store.ensure(profile.name, f, verify=verify)
        except ModelFileError as exc:
            if f.role != "modifier":
                raise
            failed[f.name] = str(exc)
    return paths, failed


def build_router(engine, profile: Profile, max_tokens: int):
    """The router, with the base model's scoring handed to its perplexity signal and the
    thresholds from the profile. The embedder gets the cores llama.cpp does not use, because the
    two run at the same time."""
    from router.decision import Thresholds
    from router.embeddings import Embedder
    from router.perplexity import Perplexity
    from router.router import Router

    thresholds = Thresholds.from_settings(profile.settings)
    if not thresholds.calibrated:
        log.warning("profile %s has no calibrated perplexity threshold: using %.1f; run python -m router.calibrate "
                    "--profile %s", profile.name, thresholds.tau_p, profile.name)
    threads = max(1, (os.cpu_count() or 2) - engine.n_threads)
    return Router(Perplexity(engine.score, max_tokens=max_tokens), thresholds, Embedder(threads=threads))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        profile = get_profile("demo" if args.demo else args.profile)
        if args.no_draft:
            profile = dataclasses.replace(profile, files=tuple(f for f in profile.files if f.role != "draft"))
        paths, failed = prepare_models(profile, Store(models_dir(args.models_dir)), verify=args.verify)
        from models.engine import Engine

        engine = Engine(paths["base"], n_ctx=args.n_ctx or profile.settings.get("n_ctx", 4096), n_threads=args.threads,
                        n_gpu_layers=args.gpu_layers,
                        modifiers={f.name: (paths[f.name], f.scale) for f in profile.modifiers if f.name in paths},
                        draft=None if args.no_draft else paths.get("draft"))
    except ModelFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from app.chat import ChatService, ChatSettings
    from app.memory import Memory
    from app.ui import DEMO_BANNER, build_ui

    memory = Memory(args.db or data_dir() / "sessions.db")
    if memory.interrupted:
        log.info("%d reply(ies) cut off by an earlier stop are kept and marked interrupted", memory.interrupted)
    failed.update(engine.modifiers.failed)
    for name, reason in failed.items():
        log.warning("modifier %s is not available: %s", name, reason)
    from router.heads import HeadFileError

    settings = ChatSettings()
    try:
        router = build_router(engine, profile, settings.max_tokens)
    except HeadFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    service = ChatService(engine, memory, settings, unavailable=failed, router=router)
    demo = build_ui(service, banner=DEMO_BANNER if profile.demo else None, model_label=f"· {profile.name}")
    if args.share:
        log.warning("--share publishes this chat, its model and every stored session list on a public URL "
                    "for 72 hours; anyone with the link can use it.")
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, share=args.share, inbrowser=not args.no_browser,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Hostile files: a model path that is a directory, an empty file, a .gguf.zst that is not a model,
a GGUF whose numbers are absurd, a sessions.db that is read-only, locked by another program, or not
a database. Each stops the app (launch.py exits 2) or the one action with a message that names the
file and says what to do; nothing already stored is lost, and nothing crashes the process.

Covered elsewhere and not repeated here:
- Engine(path) on a directory, an empty file, a zip, a truncated GGUF: the file named
  (tests/models/test_engine.py test_files_that_are_not_gguf_are_named,
  test_truncated_gguf_gives_llama_cpps_reason);
- corrupt, truncated or wrong .gguf.zst, a missing file, a partial file left by a killed run: the
  file, expected and actual digest named, no partial file, the earlier good copy kept
  (tests/models/test_store.py);
- a LoRA for another architecture ("wrong architecture": made for 'qwen2'), for other shapes, a
  model instead of an adapter, a truncated adapter...: left out by name, the engine runs on
  (tests/modifiers/test_modifiers.py test_a_bad_adapter_is_refused_by_name_and_the_rest_still_work);
  a truncated modifier at launch: the app starts without it and says so (tests/e2e/test_app.py);
- a corrupt base .gguf.zst at launch: exit 2 with the file named (tests/e2e/test_app.py).

Read-only as root: tests run as root, where chmod 0444 stops nothing (CAP_DAC_OVERRIDE). The
immutable attribute (`chattr +i`, ext2/3/4, xfs, btrfs) stops root too: open(O_RDWR) fails with
EPERM and SQLite falls back to read-only. The tests that need it skip where chattr does not work
(tmpfs, overlayfs, macOS), and always take the attribute off again. The -shm file is never made
immutable: SQLite maps it into memory, and writing a mapped immutable page is a SIGBUS.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import gguf
import pytest
import zstandard

from app.chat import MESSAGE_WAITS, WAITING_FOR_LOCK, WAITING_TO_SAVE, ChatService, ChatSettings
from app.memory import Memory, SessionStoreError
from models.demo import DemoSpec, compress, sha256_file, write_lora, write_model
from models.errors import ModelFileError
from models.manifest import ModelFile
from models.store import Store
from tests.launcher import ROOT, free_port
from tests.models.damaged import with_nan

# -- helpers ------------------------------------------------------------------------------------


def launch(data_dir: Path, models_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python launch.py ...` as a user runs it; returns when it exits (these runs never get to serve)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "launch.py", "--no-browser", "--port", str(free_port()), "--models-dir", str(models_dir),
         *args], cwd=ROOT, env={**os.environ, "COGUMI_DATA_DIR": str(data_dir)}, capture_output=True, text=True,
        timeout=timeout)


def assert_refused(result: subprocess.CompletedProcess, path: Path, *words: str) -> str:
    """Exit 2, the file named on stderr with the reason, and no Python traceback."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error, result.stderr[-3000:]
    assert str(path) in error[-1], error[-1]
    for word in words:
        assert word in error[-1], error[-1]
    assert "Traceback" not in result.stderr
    return error[-1]


def rewrite_gguf(src: Path, dst: Path, values: dict[str, int]) -> None:
    """Copy a GGUF with some uint32 header values set (added when missing), tensors unchanged."""
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch=arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF.") or field.name in values:
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    for key, value in values.items():
        writer.add_key_value(key, value, gguf.GGUFValueType.UINT32)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data)
    writer.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows(db_path: Path) -> list[tuple]:
    """Every stored message, through a fresh connection of our own."""
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return db.execute("select id, session_id, role, content, status from messages order by id").fetchall()


def cannot(reason: str) -> None:
    """Skip on a developer's machine without the means; in CI (Linux, root, e2fsprogs) the test
    must run, so there it fails instead of skipping silently."""
    (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)


@contextlib.contextmanager
def immutable(*paths: Path):
    """chattr +i on paths for the duration (see the module docstring); skips where unsupported."""
    if shutil.which("chattr") is None:
        cannot("chattr is not installed: no way to make a file read-only for root here")
    done = []
    try:
        for path in paths:
            if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
                cannot(f"chattr +i does not work on {path}'s filesystem")
            done.append(path)
        probe = paths[0] if paths[0].is_file() else None
        if probe is not None:
            with contextlib.suppress(PermissionError):
                with open(probe, "ab"):
                    cannot("an immutable file is still writable here (no CAP_LINUX_IMMUTABLE semantics)")
        yield
    finally:
        for path in done:
            subprocess.run(["chattr", "-i", str(path)], check=False)


@contextlib.contextmanager
def locked(db_path: Path):
    """Another program holding sessions.db's write lock (BEGIN EXCLUSIVE) until the block ends."""
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("begin exclusive")
        yield holder
    finally:
        holder.execute("rollback")
        holder.close()


def stored_chat(db_path: Path) -> list[tuple]:
    """A sessions.db with one session of two turns in it; returns its rows."""
    memory = Memory(db_path)
    session = memory.new_session()
    for role, text in [("user", "keep me"), ("assistant", "kept"), ("user", "and me"), ("assistant", "also kept")]:
        memory.add_message(session, role, text)
    memory.db.conn.close()
    return rows(db_path)


# -- model files at launch ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory) -> Path:
    """A real two-layer GGUF (the demo draft), the raw material of the absurd ones."""
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    write_model(path, DemoSpec(), "draft")
    return path


def zst(path: Path, data: bytes) -> Path:
    path.write_bytes(zstandard.ZstdCompressor().compress(data))
    return path


def compressed(path: Path, write) -> Path:
    """path.zst of the GGUF write(path) makes, the GGUF itself removed."""
    write(path)
    compress(path, path.with_name(path.name + ".zst"))
    path.unlink()
    return path.with_name(path.name + ".zst")


def a_directory(folder: Path, small: Path) -> Path:
    (folder / "model.gguf").mkdir()
    return folder / "model.gguf"


def a_zero_byte_file(folder: Path, small: Path) -> Path:
    (folder / "model.gguf").write_bytes(b"")
    return folder / "model.gguf"


def with_values(**values: int):
    def make(folder: Path, small: Path) -> Path:
        rewrite_gguf(small, folder / "model.gguf", {f"llama.{k}": v for k, v in values.items()})
        return folder / "model.gguf"
    return make


MODEL_FILES = {  # how to make it → what the error line says besides the file's name
    "a directory": (a_directory, ["is a directory"]),
    "a zero-byte file": (a_zero_byte_file, ["is empty"]),
    "a .gguf.zst of text": (lambda d, g: zst(d / "model.gguf.zst", b"just some text, not a model\n" * 50),
                            ["not a GGUF model file", "b'just'"]),
    "a .gguf.zst of nothing": (lambda d, g: zst(d / "model.gguf.zst", b""), ["not a GGUF model file"]),
    # QA 31 #3: both were "its zstd data is damaged … Delete it", of what may be the only copy of a good model
    "a GGUF named .gguf.zst": (lambda d, g: Path(shutil.copyfile(g, d / "model.gguf.zst")),
                               ["is a GGUF model, not zstd-compressed", "name ending in .gguf"]),
    "a text named .gguf.zst": (lambda d, g: (d / "model.gguf.zst").write_text("hello\n") and d / "model.gguf.zst",
                               ["is not zstd-compressed", "b'hello\\n'", "Copy or download it again."]),
    # QA 32 #4: "decompresses to nothing", as if an empty archive; and the cache's advice ("Delete it … the demo set's
    # is rebuilt") for a file of your own
    "an empty .gguf.zst": (lambda d, g: (d / "model.gguf.zst").write_bytes(b"") or d / "model.gguf.zst",
                           ["is empty: not zstd-compressed", "Copy or download it again."]),
    "0 layers": (with_values(block_count=0), ["llama.block_count is 0"]),
    "a 2^32-1 token context": (with_values(context_length=2**32 - 1), ["llama.context_length is 4,294,967,295"]),
    "NaN in its weights": (lambda d, g: with_nan(g, d / "model.gguf", "blk.0.attn_q.weight"),
                           ["not a number", "Copy or download it again"]),
    # QA 19: checked on its copy in the model cache, the error named that copy, told to pass the copy's name
    # with --modifier (not found), and left it there
    "a LoRA adapter, compressed": (lambda d, g: compressed(d / "lora.gguf", lambda p: write_lora(p, DemoSpec(), "code")),
                                   ["is a LoRA adapter, not a model", "--modifier NAME="]),
    "NaN in its weights, compressed": (lambda d, g: compressed(d / "nan.gguf",
                                                               lambda p: with_nan(g, p, "blk.0.attn_q.weight")),
                                       ["not a number"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", MODEL_FILES)
def test_a_hostile_model_file_stops_launch_with_the_file_named(tmp_path, small_gguf, case):
    make, words = MODEL_FILES[case]
    path = make(tmp_path, small_gguf)
    models = tmp_path / "model-cache"
    result = launch(tmp_path / "data", models, "--model", str(path))
    line = assert_refused(result, path, *words)
    # named as given, with its flag (QA 19: "base model …"); a file of your own is no copy in the model cache
    assert line.startswith(f"error: --model {path}") and "--verify" not in line and "model-cache" not in line
    assert "Delete it" not in line and "demo set" not in line
    # nothing half-made is left in the cache; sessions.db, opened first, holds no chat
    assert not [p for p in models.rglob("*") if p.is_file()]
    assert rows(tmp_path / "data" / "sessions.db") == []


MODIFIER_FILES = {  # a --modifier file of your own that cannot be used → what the error line says
    "a LoRA for another base": (lambda d, s: write_lora(d / "lora.gguf", DemoSpec(n_embd=128, n_ff=352), "code"),
                                ["wrong base model?"]),
    "a full model": (lambda d, s: write_model(d / "lora.gguf", DemoSpec(), "draft"),
                     ["a model, not a LoRA adapter"]),
    "a text file": (lambda d, s: (d / "lora.gguf").write_text("not a model\n"), ["not a GGUF file"]),
    "a directory": (lambda d, s: (d / "lora.gguf").mkdir(), ["is a directory"]),
    "NaN in its weights": (lambda d, s: with_nan(s["code"], d / "lora.gguf", next(
        t.name for t in gguf.GGUFReader(s["code"]).tensors if t.name.endswith("lora_b"))), ["not a number"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", MODIFIER_FILES)
def test_a_modifier_file_of_your_own_that_cannot_be_used_stops_launch(tmp_path, demo_set, case):
    """Asked for by name on the command line, it stops the start, as a bad --model does; a profile's
    own modifier that fails is left out with its reason instead (tests/modifiers)."""
    make, words = MODIFIER_FILES[case]
    make(tmp_path, demo_set)
    lora = tmp_path / "lora.gguf"
    result = launch(tmp_path / "data", tmp_path / "model-cache", "--model", str(demo_set["base"]),
                    "--modifier", f"code={lora}", "--modifier", f"reasoning={demo_set['reasoning']}")
    line = assert_refused(result, lora, "--modifier code", *words)
    assert "leave out --modifier code" in line
    assert rows(tmp_path / "data" / "sessions.db") == []


def test_one_modifier_name_twice_is_refused(tmp_path, demo_set):
    result = launch(tmp_path / "data", tmp_path / "model-cache", "--model", str(demo_set["base"]),
                    "--modifier", f"code={demo_set['code']}", "--modifier", f"code={demo_set['reasoning']}")
    assert_refused(result, demo_set["reasoning"], "--modifier code is given twice")


def test_the_model_file_given_as_a_modifier_is_named_as_the_model_itself(tmp_path, demo_set):
    """QA 27 #9: it read "--modifier code: --model …/base.gguf: is a model, not a LoRA adapter", both flags on
    one file, after the base had loaded."""
    result = launch(tmp_path / "data", tmp_path / "model-cache", "--model", str(demo_set["base"]),
                    "--modifier", f"code={demo_set['base']}")
    line = assert_refused(result, demo_set["base"], "--modifier code", "is the --model file itself")
    assert line.count("--model") == 1 and "LoRA" in line
    assert rows(tmp_path / "data" / "sessions.db") == []


def demo_copy(demo_models_dir: Path, models: Path) -> Path:
    """A models dir holding the demo set's .gguf.zst files only (tests/e2e/test_app.py does the same)."""
    (models / "demo").mkdir(parents=True)
    for src in (demo_models_dir / "demo").glob("*.zst"):
        shutil.copyfile(src, models / "demo" / src.name)
    return models / "demo"


DEMO_FILES = {
    "a directory": (lambda p: p.mkdir(), ["could not write the demo model set", "Is a directory"]),
    "a zero-byte file": (lambda p: p.write_bytes(b""), ["is empty: not zstd-compressed", "Delete it"]),
    "zstd of a text": (lambda p: zst(p, b"not a model\n" * 1000), ["expected sha256", "actual"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", DEMO_FILES)
def test_a_hostile_file_in_the_model_cache_stops_launch_with_the_file_named(tmp_path, demo_models_dir, case):
    make, words = DEMO_FILES[case]
    folder = demo_copy(demo_models_dir, tmp_path / "models")
    base = folder / "base.gguf.zst"
    base.unlink()
    make(base)
    others = {p.name: digest(p) for p in folder.glob("*.zst") if p != base}
    result = launch(tmp_path / "data", tmp_path / "models")
    assert_refused(result, base, *words)
    assert not list(folder.glob(".*partial")) and not (folder / "base.gguf").exists()
    if case != "a directory":  # (a directory there sends launch to rebuild the demo set, which is allowed)
        assert {p.name: digest(p) for p in folder.glob("*.zst") if p != base} == others


# -- absurd GGUFs at the engine: llama.cpp aborted the process on some -----------------------------

LOAD = """
import sys
from pathlib import Path
from models.engine import Engine
from models.errors import ModelFileError
try:
    engine = Engine(Path(sys.argv[1]), n_ctx=256)
except ModelFileError as exc:
    print(exc)
    sys.exit(3)
*pieces, stats = engine.generate([{"role": "user", "content": "hello"}], max_tokens=4)
print("generated", stats.tokens)
"""


def absurd_tensor(src: Path, dst: Path) -> None:
    """output.weight's header shape claims 2^40 rows; its data is the 782 rows of the vocabulary."""
    shutil.copyfile(src, dst)
    reader = gguf.GGUFReader(dst, "r+")
    (tensor,) = [t for t in reader.tensors if t.name == "output.weight"]
    tensor.field.parts[3][1] = 1 << 40
    del reader


ABSURD = {  # header values → what the message says (ours, or llama.cpp's own error)
    "0 layers": ({"llama.block_count": 0}, "llama.block_count is 0"),
    "513 layers": ({"llama.block_count": 513}, "llama.block_count is 513"),
    "2^20 layers": ({"llama.block_count": 1 << 20}, "llama.block_count is 1,048,576"),
    "100000 experts": ({"llama.expert_count": 100_000, "llama.expert_used_count": 2}, "llama.expert_count is 100,000"),
    "more experts used than there are": ({"llama.expert_count": 4, "llama.expert_used_count": 8},
                                         "llama.expert_used_count is 8"),
    "experts, none used": ({"llama.expert_count": 4, "llama.expert_used_count": 0}, "llama.expert_used_count is 0"),
    "experts used, none there": ({"llama.expert_used_count": 2}, "llama.expert_used_count is 2"),
    "a 0-token context": ({"llama.context_length": 0}, "llama.context_length is 0"),
    "a 2^31-token context": ({"llama.context_length": 1 << 31}, "llama.context_length is 2,147,483,648"),
    "a 2^30-wide embedding": ({"llama.embedding_length": 1 << 30}, "could not load it"),
    "0 attention heads": ({"llama.attention.head_count": 0}, "could not load it"),
    "a 2^30-wide feed-forward": ({"llama.feed_forward_length": 1 << 30}, "wrong shape"),
    "a tensor of 2^40 rows": (absurd_tensor, "could not load it"),
}


def run_load(path: Path, memory_limit: int | None = None) -> subprocess.CompletedProcess:
    """Load in a child process: a llama.cpp abort (SIGABRT) must not take the test run with it."""
    def limit():
        if memory_limit:
            import resource
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    return subprocess.run([sys.executable, "-c", LOAD, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, preexec_fn=limit, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("case", ABSURD)
def test_an_absurd_gguf_is_refused_by_name_instead_of_aborting(tmp_path, small_gguf, case):
    change, words = ABSURD[case]
    path = tmp_path / "absurd.gguf"
    change(small_gguf, path) if callable(change) else rewrite_gguf(small_gguf, path, change)
    result = run_load(path)
    assert result.returncode == 3, f"exit {result.returncode} (-6: llama.cpp aborted)\n{result.stderr[-2000:]}"
    message = result.stdout.strip()
    assert message.startswith(f"base model {path}: ") and words in message, message


def test_a_huge_trained_context_costs_no_memory_until_used(tmp_path, small_gguf):
    """2^31-1 tokens is a legal context_length: the engine takes the context it was asked for,
    and tokenizing no longer sizes a buffer by it (LlamaModel.tokenize allocated 8 GB per call)."""
    path = tmp_path / "huge-context.gguf"
    rewrite_gguf(small_gguf, path, {"llama.context_length": 2**31 - 1})
    result = run_load(path, memory_limit=3 << 30)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "generated 4" in result.stdout


# -- sessions.db ----------------------------------------------------------------------------------


def test_a_read_only_sessions_db_is_refused_at_open_and_kept(tmp_path):
    db_path = tmp_path / "sessions.db"
    before = stored_chat(db_path)
    with immutable(db_path, tmp_path):
        with pytest.raises(SessionStoreError) as err:
            Memory(db_path)
    message = str(err.value)
    assert message.startswith(f"{db_path}: ") and "writable" in message and "--db" in message
    assert rows(db_path) == before


def test_a_locked_sessions_db_is_refused_at_open_and_kept(tmp_path):
    db_path = tmp_path / "sessions.db"
    before = stored_chat(db_path)
    with locked(db_path):
        started = time.monotonic()
        with pytest.raises(SessionStoreError) as err:
            Memory(db_path, timeout=0.3)
        assert time.monotonic() - started < 5
    message = str(err.value)
    assert message.startswith(f"{db_path}: ") and "locked" in message and "another program" in message
    assert rows(db_path) == before
    Memory(db_path)  # free again: it opens


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_bytes(b"these are my notes, not a database\n" * 100), "not a SQLite database"),
    (lambda p: p.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000), "damaged"),
    (lambda p: p.mkdir(), "not a folder"),
])
def test_a_sessions_db_that_is_not_a_database_is_named_and_left_as_it_is(tmp_path, make, words):
    db_path = tmp_path / "sessions.db"
    make(db_path)
    before = digest(db_path) if db_path.is_file() else None
    with pytest.raises(SessionStoreError) as err:
        Memory(db_path)
    assert str(err.value).startswith(f"{db_path}: ") and words in str(err.value), str(err.value)
    assert (digest(db_path) if db_path.is_file() else None) == before


@pytest.fixture
def chat(engine, tmp_path):
    """ChatService on the demo engine over a sessions.db whose writes wait at most 0.3 s for a lock."""
    settings = ChatSettings(temperature=0, max_tokens=24, seed=0, save_every_s=0.0)
    return ChatService(engine, Memory(tmp_path / "sessions.db", timeout=0.3), settings)


def test_a_message_sent_while_sessions_db_is_locked_is_not_sent_and_the_chat_goes_on(chat, tmp_path):
    db_path = tmp_path / "sessions.db"
    *_, first = chat.respond(None, "hello")
    before = rows(db_path)
    with locked(db_path):
        *waited, refused = chat.respond(first.session_id, "a second message")
        *_, new_chat = chat.respond(None, "a new chat")
    # what it waits for is said as it waits (QA 28)
    assert [(u.status, u.notice) for u in waited] == [("waiting", f"{WAITING_FOR_LOCK} {MESSAGE_WAITS}")]
    for update in (refused, new_chat):
        assert update.done and update.status == "ignored"
        assert "was not sent" in update.notice and str(db_path) in update.notice and "locked" in update.notice
    assert refused.session_id == first.session_id
    assert rows(db_path) == before
    *_, after = chat.respond(first.session_id, "a second message")
    assert after.status == "complete"
    assert [r[3] for r in rows(db_path)] == ["hello", first.text, "a second message", after.text]


@pytest.mark.parametrize("change", ["alter table messages rename to messages_aside",
                                    "create trigger no_replies before insert on messages when new.role = 'assistant' "
                                    "begin select raise(abort, 'refused by a trigger'); end"])
def test_a_message_that_could_not_be_stored_leaves_no_trace(engine, tmp_path, change):
    """QA 30 #7: a first message whose storing failed (messages renamed by another program) left its new chat behind,
    empty, listed as "New chat" after a reload. And a message stored whose reply's row then failed was said "not
    sent", put back in the box, and kept in the chat too: the two rows are one write now."""
    db_path = tmp_path / "sessions.db"
    chat = ChatService(engine, Memory(db_path), ChatSettings(temperature=0, max_tokens=8, seed=0))
    *_, first = chat.respond(None, "hello")
    with contextlib.closing(sqlite3.connect(db_path)) as db, db:
        db.execute(change)
    *_, in_chat = chat.respond(first.session_id, "in the chat")
    *_, new_chat = chat.respond(None, "a new chat")
    for update in (in_chat, new_chat):
        assert update.status == "ignored" and update.notice.startswith("Your message was not sent")
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        assert db.execute("select id from sessions").fetchall() == [(first.session_id,)]
        assert db.execute(f"select count(*) from {change.split()[-1] if 'rename' in change else 'messages'}"
                          ).fetchone() == (2,)
    page_made = chat.new_session()  # the page makes the chat first, for its Stop, then sends
    *_, from_the_page = chat.respond(page_made, "from the page")
    assert from_the_page.status == "ignored"
    chat.discard_unsent(page_made)
    assert [s["id"] for s in chat.sessions()] == [first.session_id]


@pytest.mark.parametrize("case", ["a newer version's", "another program's"])
def test_a_sessions_db_that_is_not_this_versions_is_named_and_left_as_it_is(tmp_path, case):
    """A newer version's (a migration this one does not know) started with no word and then failed at
    every reply; another program's was taken over (tables added, switched to WAL) or refused with a hint
    about the disk."""
    db_path = tmp_path / "sessions.db"
    if case == "a newer version's":
        stored_chat(db_path)
        with contextlib.closing(sqlite3.connect(db_path)) as db, db:
            db.execute("insert into _migrations values ('m099_from_the_future', '2027-01-01')")
    else:
        with contextlib.closing(sqlite3.connect(db_path)) as db, db:
            db.execute("create table messages (sender text, body text)")
            db.execute("insert into messages values ('ann', 'see you at 5')")
    before = digest(db_path)
    with pytest.raises(SessionStoreError) as err:
        Memory(db_path)
    said = str(err.value)
    assert str(db_path) in said and "--db OTHER.db" in said
    assert ("newer version" in said and "m099_from_the_future" in said) if case == "a newer version's" \
        else ("not a Cogumi Chat session database" in said and "messages" in said)
    assert digest(db_path) == before and not Path(f"{db_path}-wal").exists()


@pytest.mark.parametrize("change, missing", [
    ("drop table decisions", "the table decisions"),
    ("drop table feedback", "the table feedback"),
    ("alter table decisions drop column drafting", "the column decisions.drafting"),
    ("drop index idx_sessions_owner_updated_at; alter table sessions drop column owner", "the column sessions.owner"),
    # QA 25 #5: a record of _migrations deleted ("duplicate column name: drafting; check the disk"), or all of them
    ("delete from _migrations where name = 'm005_decisions_drafting'",
     "the column decisions.drafting is there, but _migrations has no record of m005_decisions_drafting"),
    ("delete from _migrations where name = 'm003_feedback'",
     "the table feedback is there, but _migrations has no record of m003_feedback"),
    ("drop table _migrations", "the table _migrations"),
])
def test_a_sessions_db_changed_by_hand_is_named_and_left_as_it_is(tmp_path, change, missing):
    """QA 24 #1: a table or column dropped by hand opened without a word; then every reply failed with "check the
    disk it is on", or (a column) was not saved and retried for two minutes."""
    db_path = tmp_path / "sessions.db"
    stored_chat(db_path)
    with contextlib.closing(sqlite3.connect(db_path)) as db, db:
        db.executescript(change)
    before = digest(db_path)
    with pytest.raises(SessionStoreError) as err:
        Memory(db_path)
    said = str(err.value)
    assert said.startswith(f"{db_path}: ") and missing in said and "--db OTHER.db" in said, said
    assert "disk" not in said
    assert digest(db_path) == before and not Path(f"{db_path}-wal").exists()


@pytest.mark.parametrize("verify", [False, True])
def test_a_read_only_models_folder_is_named_not_a_traceback(tmp_path, verify):
    """A copy to make (or to make again, --verify on a changed one) in a folder that cannot be written:
    the temporary file, and the stale digest's removal, once raised PermissionError past the store."""
    store = Store(tmp_path / "cache", progress=False)
    folder = store.folder("p")
    folder.mkdir(parents=True)
    model = tmp_path / "draft.gguf"
    write_model(model, DemoSpec(), "draft")
    compress(model, folder / "draft.gguf.zst")
    entry = ModelFile("draft", "draft", "draft.gguf.zst", sha256_file(model), model.stat().st_size)
    if verify:  # a good copy, then one byte of it changed
        copy = store.ensure("p", entry)
        data = bytearray(copy.read_bytes())
        data[len(data) // 2] ^= 0xFF
        copy.write_bytes(bytes(data))
    with immutable(folder), pytest.raises(ModelFileError, match="--models-dir") as err:
        store.ensure("p", entry, verify=verify)
    assert str(folder) in str(err.value)


@pytest.mark.parametrize("write", ["new_session", "add_message", "update_message", "set_feedback"])
def test_a_write_waits_for_another_programs_short_lock_instead_of_failing_at_once(tmp_path, write):
    """Another program's write lock, held for 0.6 s: each write waits for it, up to Memory's timeout. A
    transaction that read before writing (sqlite-utils reads a table's columns before an insert) could
    not wait: SQLite refuses a read lock's upgrade at once, and the message was "not sent"."""
    db_path = tmp_path / "sessions.db"
    memory = Memory(db_path, timeout=10)
    session = memory.new_session()
    memory.add_message(session, "user", "hello")
    reply = memory.add_message(session, "assistant", "hi")
    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    holder.execute("begin immediate")
    releaser = threading.Timer(0.6, holder.execute, ["rollback"])
    releaser.start()
    started = time.monotonic()
    try:
        {"new_session": lambda: memory.new_session(),
         "add_message": lambda: memory.add_message(session, "user", "written after the lock"),
         "update_message": lambda: memory.update_message(reply, content="hi there"),
         "set_feedback": lambda: memory.set_feedback(reply, True)}[write]()
    finally:
        releaser.join()
        holder.close()
    assert time.monotonic() - started >= 0.5  # it waited, and then it was written


@pytest.mark.parametrize("failure", ["locked", "read-only"])
def test_a_reply_that_cannot_be_saved_says_so_and_nothing_stored_is_lost(chat, tmp_path, failure):
    db_path = tmp_path / "sessions.db"
    *_, first = chat.respond(None, "hello")
    # (closing: a failed assert must not leave the reply holding the session-wide engine)
    with contextlib.closing(chat.respond(first.session_id, "tell me more")) as stream:
        next(stream)  # the message and the reply row are committed; the reply is streaming
        before = rows(db_path)
        assert before[-1][2::2] == ("assistant", "streaming") and before[-2][3] == "tell me more"
        blocker = locked(db_path) if failure == "locked" else immutable(db_path, Path(f"{db_path}-wal"), tmp_path)
        with blocker:
            done = []
            for last in stream:
                done.append(last.done)
    assert done[-1] and not any(done[:-1]) and last.text
    assert last.status == "complete" and "This reply could not be saved" in last.notice and str(db_path) in last.notice
    assert "tries again" in last.notice
    # QA 19: it stayed "streaming", empty, until the next start marked it interrupted: lost, and the page followed
    # it. Saving is tried again each second: once sessions.db can be written, the reply is kept whole.
    deadline = time.monotonic() + 10
    while rows(db_path)[-1][4] == "streaming" and time.monotonic() < deadline:
        time.sleep(0.1)
    after = rows(db_path)
    assert after[:-1] == before[:-1]  # every earlier row as it was
    assert after[-1][2:] == ("assistant", last.text, "complete")
    assert Memory(db_path).interrupted == 0


def test_a_lock_taken_while_a_reply_streams_does_not_hold_the_reply_up(engine, tmp_path):
    """QA 30 #6: the save as a reply streams waited for another program's lock on the generating thread, and the
    reply stopped growing for 10 s. It is tried without waiting, again at the next save, and the reply goes on; the
    save at its end waits, and keeps it whole."""
    db_path = tmp_path / "sessions.db"
    settings = ChatSettings(temperature=0, max_tokens=48, seed=0, save_every_s=0.0)
    chat = ChatService(engine, Memory(db_path, timeout=30), settings)
    *_, first = chat.respond(None, "hello")
    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    shown_at = []
    with contextlib.closing(chat.respond(first.session_id, "tell me a long story")) as stream:
        next(stream)  # the message and its reply row are stored: the lock comes as the reply streams
        holder.execute("begin exclusive")
        releaser = threading.Timer(3.0, lambda: (holder.execute("rollback"), holder.close()))
        releaser.start()
        shown_at.append(time.monotonic())
        updates = []
        for last in stream:
            shown_at.append(time.monotonic())
            updates.append((last.text, last.done, last.notice))
    releaser.join()
    gaps = [b - a for a, b in zip(shown_at, shown_at[1:-1])]  # the last update comes after the save at the end
    assert len(gaps) > 5 and max(gaps) < 1.5, gaps  # not one 3 s wait for the lock, as the reply grows
    assert last.status == "complete" and last.text and last.notice is None
    # QA 32 #1: the save at its end waited for the lock with the reply's last words held back, and not a word said
    assert updates[-2] == (last.text, False, WAITING_TO_SAVE)
    assert rows(db_path)[-1][2:] == ("assistant", last.text, "complete")


def test_a_lock_taken_between_the_message_and_its_routing_decision_still_gives_the_reply(engine, router_parts,
                                                                                         tmp_path):
    """QA 28 #6: another program's lock taken just after the message was saved made the decision's write fail:
    no reply at all, the turn marked failed, and the message both in the chat and back in the box. The reply goes
    on; the decision is written with the reply once the lock is let go."""
    from tests.conftest import service_with_router

    db_path = tmp_path / "sessions.db"
    service = service_with_router(engine, router_parts, db_path)
    service.memory = Memory(db_path, timeout=0.3)
    decide, holders = service.router.decide, []

    def decide_then_lock(*args, **kwargs):  # the window: the message stored, the decision not yet
        decision = decide(*args, **kwargs)
        holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        holder.execute("begin exclusive")
        holders.append(threading.Timer(1.5, lambda: (holder.execute("rollback"), holder.close())))
        holders[-1].start()
        return decision

    service.router.decide = decide_then_lock
    *_, last = service.respond(None, "Write a Python function that reverses a list.")
    assert last.status == "complete" and last.text, last.notice
    holders[0].join()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and rows(db_path)[-1][4] != "complete":
        time.sleep(0.1)
    assert rows(db_path)[-1][2:] == ("assistant", last.text, "complete")
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        stored = db.execute("select message_id, route, tokens from decisions").fetchall()
    assert stored == [(last.message_id, last.decision.route, last.stats.tokens)]


def test_a_message_whose_decisions_cannot_be_read_says_it_was_not_answered(engine, router_parts, tmp_path):
    """QA 30 #7: with decisions renamed by another program, a message was marked "The reply could not be saved",
    where no reply had been made: the router could not read the session's decisions."""
    from tests.conftest import service_with_router

    service = service_with_router(engine, router_parts, tmp_path / "sessions.db")
    *_, first = service.respond(None, "hello")
    with contextlib.closing(sqlite3.connect(tmp_path / "sessions.db")) as db, db:
        db.execute("alter table decisions rename to decisions_aside")
    *_, last = service.respond(first.session_id, "and then?")
    assert last.status == "error" and last.text == ""
    assert last.notice.startswith("This message was not answered: sessions.db could not be read to route it.")
    assert "the table decisions, which this app made in it, is missing" in last.notice


# -- sessions.db at launch ------------------------------------------------------------------------


def on_a_text_file(tmp_path: Path, *args: str) -> list[str]:
    """The command `python launch.py --model` naming a text file (tmp_path/model.gguf, written here): an error
    that names anything else shows that thing was read before the model."""
    not_a_model = tmp_path / "model.gguf"
    not_a_model.write_text("not a model\n")
    return [sys.executable, "launch.py", "--no-browser", "--port", str(free_port()), "--model", str(not_a_model), *args]


def launch_on_a_text_file(tmp_path: Path, env: dict[str, str | None], *args: str) -> subprocess.CompletedProcess:
    """on_a_text_file run to its end, with env's variables set (None: unset)."""
    environ = {**os.environ, **env}
    return subprocess.run(on_a_text_file(tmp_path, *args), cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in environ.items() if v is not None})


@pytest.mark.parametrize("where", ["--db a folder", "a data folder inside a file"])
def test_a_session_store_that_cannot_be_used_is_said_before_any_model_is_read(tmp_path, where):
    """The data folder and sessions.db are opened first: their error came after the models were
    downloaded and loaded (minutes, for a real profile), or never, when a model failed first. The
    model here is not a model at all, so the error proves which was read first."""
    data, args = tmp_path / "data", []
    if where == "--db a folder":
        args = ["--db", str(tmp_path)]
        data.mkdir()
    else:
        (tmp_path / "file").write_text("a file, not a folder\n")
        data = tmp_path / "file" / "data"
    result = launch_on_a_text_file(tmp_path, {"COGUMI_DATA_DIR": str(data)}, *args)
    line = assert_refused(result, tmp_path / ("" if args else "file/data"), "--db")
    assert "model.gguf" not in line
    if not args:  # QA 11: started with --db alone, the model cache, in the data folder too, failed next
        assert "--models-dir" in line
    assert (tmp_path / "model.gguf").read_text() == "not a model\n"


def test_a_locked_sessions_db_at_start_is_said_while_the_start_waits_for_it(tmp_path):
    """QA 11: the start waited its 10 s for another program's lock on sessions.db in silence, then gave its
    clear error. It says so as the wait begins; let go within the wait, the start goes on (here to the
    "model", a text file, whose error shows it got past the store)."""
    db_path = tmp_path / "sessions.db"
    before = stored_chat(db_path)
    lines: list[str] = []
    with locked(db_path):
        start = subprocess.Popen(on_a_text_file(tmp_path, "--db", str(db_path)), cwd=ROOT, stderr=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, text=True)
        reader = threading.Thread(target=lambda: lines.extend(start.stderr), daemon=True)
        reader.start()
        # The store's 10 s wait starts after the imports, which took over 8 s on a loaded machine: the wait's
        # own line is what lets go of the lock, however late it comes.
        deadline = time.monotonic() + 60
        while not any("waiting" in line for line in lines) and time.monotonic() < deadline and start.poll() is None:
            time.sleep(0.05)
        said = [line for line in lines if "waiting" in line]
        assert said, "".join(lines)
        assert str(db_path) in said[0] and "another program" in said[0] and "10 s" in said[0], said[0]
    assert start.wait(timeout=60) == 2
    reader.join(timeout=5)
    error = [line for line in lines if line.startswith("error: ")]
    assert error and str(tmp_path / "model.gguf") in error[-1], "".join(lines)
    assert rows(db_path) == before


SPACE_DATA = {  # what is in the Space's volume → the path the error line names
    "a file where the data folder goes": (lambda v: (v / "cogumi").write_text("a file\n"), "cogumi"),
    "a folder where the browser-state secret goes": (lambda v: (v / "cogumi" / "browser-state.secret").mkdir(parents=True),
                                                      "cogumi/browser-state.secret"),
}


@pytest.mark.parametrize("case", SPACE_DATA)
def test_a_space_volume_that_cannot_be_used_is_said_before_any_model_is_read(tmp_path, case):
    """QA 11: on a Space, a data folder that could not be made was a traceback (on_space made it), and a
    browser-state secret that could not be read one too, after the models had loaded."""
    make, named = SPACE_DATA[case]
    volume = tmp_path / "volume"
    volume.mkdir()
    make(volume)
    result = launch_on_a_text_file(tmp_path, {"COGUMI_DATA_DIR": None, "SPACE_ID": "cogumi/chat",
                                              "COGUMI_SPACES_PERSISTENT_DIR": str(volume)})
    line = assert_refused(result, volume / named)
    assert "model.gguf" not in line


@pytest.mark.slow
def test_a_read_only_sessions_db_stops_launch_with_the_file_named(tmp_path, demo_models_dir):
    data = tmp_path / "data"
    data.mkdir()
    db_path = data / "sessions.db"
    before = stored_chat(db_path)
    with immutable(db_path, data):
        result = launch(tmp_path / "elsewhere", demo_models_dir, "--db", str(db_path))
    assert_refused(result, db_path, "writable", "--db")
    assert rows(db_path) == before


@pytest.mark.slow
def test_a_locked_sessions_db_stops_launch_with_the_file_named(tmp_path, demo_models_dir):
    data = tmp_path / "data"
    data.mkdir()
    db_path = data / "sessions.db"
    before = stored_chat(db_path)
    with locked(db_path):  # launch waits its 10 s for the lock, then says who to ask
        result = launch(data, demo_models_dir)
    assert_refused(result, db_path, "locked", "another program")
    assert rows(db_path) == before

"""kill -9, then start again: `python launch.py` is killed with SIGKILL (no handler, no cleanup)
while a reply streams, and while the first start writes the model cache; the next start on the
same data and models folders keeps what was written, marks what was cut off, and runs."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from gradio_client import Client
from playwright.sync_api import expect, sync_playwright

from models.manifest import get_profile
from models.store import Store, hash_file
from tests.e2e.test_browser import CHROMIUM_ARGS, chromium_path
from tests.launcher import running_app, start_app

INTERRUPTED_LOG = "reply cut off by an earlier stop is kept and marked interrupted"  # streaming == 1


def compressed_copy(demo_models_dir: Path, models: Path) -> Path:
    """A models folder holding only the demo set's .gguf.zst files: the app's first start
    decompresses and verifies them, as it would a downloaded model set."""
    (models / "demo").mkdir(parents=True)
    for src in (demo_models_dir / "demo").glob("*.zst"):
        shutil.copyfile(src, models / "demo" / src.name)
    return models


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """name → (inode, mtime ns, size) of every file: a file decompressed or written again changes."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir() if p.is_file()}


def keep_chatting(url: str, session: str, sent: list[str], stop: threading.Event) -> None:
    """A person sending message after message in one session until the app goes away."""
    client = Client(url, verbose=False)
    while not stop.is_set():
        sent.append(f"Tell me a long story, part {len(sent) + 1}.")
        try:
            client.predict(sent[-1], session, api_name="/chat")
        except Exception:  # noqa: BLE001 - the app was killed under it
            return


def kill_mid_reply(app, session: str, sent: list[str], attempts: int = 150) -> None:
    """Chat until an assistant row in sessions.db has text but is still 'streaming', then kill -9."""
    stop = threading.Event()
    chatter = threading.Thread(target=keep_chatting, args=(app.url, session, sent, stop), daemon=True)
    chatter.start()
    db = sqlite3.connect(app.db_path)
    try:
        while chatter.is_alive() and len(sent) <= attempts:
            if db.execute("select 1 from messages where role = 'assistant' and status = 'streaming' "
                          "and length(content) > 0").fetchone():
                stop.set()
                app.kill()
                break
            time.sleep(0.005)
    finally:
        db.close()
        stop.set()
        app.kill()
        chatter.join(timeout=60)


@pytest.mark.slow
def test_a_reply_cut_off_by_kill_9_is_kept_and_marked_interrupted(tmp_path, demo_models_dir):
    data, models = tmp_path / "data", compressed_copy(demo_models_dir, tmp_path / "models")
    # A long reply (up to 2000 tokens) by plain decoding: slower than speculative, so more replies
    # outlast the first save to sessions.db (after 0.5 s) and can be caught streaming.
    args = ("--max-tokens", "2000", "--no-draft")
    tried = 0
    for attempt in range(3):  # a reply that ends between the look and the kill: start again, new session
        app = start_app(data, models, *args, log_name=f"run-{attempt}.log")
        app.wait_for_chat()
        if attempt == 0:
            assert "decompress base.gguf.zst" in app.log()  # this first start wrote the model cache
            cache = snapshot(models / "demo")
        session, sent = Client(app.url, verbose=False).predict(api_name="/new_session"), []
        kill_mid_reply(app, session, sent)
        tried += len(sent)
        db = sqlite3.connect(app.db_path)
        cut = db.execute("select id, content from messages where session_id = ? and role = 'assistant' "
                         "and status = 'streaming' and length(content) > 0", [session]).fetchall()
        streaming = db.execute("select count(*) from messages where status = 'streaming'").fetchone()[0]
        db.close()
        if cut:
            break
    assert len(cut) == 1, f"no reply was caught streaming in {tried} messages"
    (reply_id, partial), = cut

    with running_app(data, models, *args, log_name="restart.log") as (url, db_path):
        log = (data / "restart.log").read_text()
        assert f"{streaming} {INTERRUPTED_LOG}" in log and streaming == 1
        # The models were not decompressed again: the same files (inode, mtime, size), no partial
        # file in the cache, no decompression on the log.
        assert snapshot(models / "demo") == cache
        assert not list(models.rglob("*.partial"))
        assert "decompress" not in log and "building the demo" not in log

        db = sqlite3.connect(db_path)
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
        rows = db.execute("select id, role, content, status from messages where session_id = ? order by id",
                          [session]).fetchall()
        # The user's message is there, the partial reply after it, kept as it was and marked.
        assert rows[-2][1:] == ("user", sent[-1], "complete")
        assert rows[-1] == (reply_id, "assistant", partial, "interrupted")
        assert all(r[3] == "complete" for r in rows[:-1])
        assert db.execute("select count(*) from decisions where message_id = ?", [reply_id]).fetchone()[0] == 1

        # The page shows it marked when the chat is reopened.
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#message textarea")
            page.locator(f'#sessions input[value="{session}"]').check()
            last = page.locator("#chat .message-row.bot-row").last
            expect(last).to_contain_text("(interrupted")
            words = [w for w in partial.split() if w.isalpha() and len(w) > 3]  # not markdown syntax
            if words:
                expect(last).to_contain_text(words[0])
            browser.close()

        # And the conversation goes on in the same session.
        reply = Client(url, verbose=False).predict("Are you back?", session, api_name="/chat")
        assert db.execute("select content, status from messages where session_id = ? order by id desc limit 1",
                          [session]).fetchone() == (reply, "complete")
    print(f"\ncrash: killed mid-reply after {tried} message(s) in {attempt + 1} run(s); the cut reply kept "
          f"{len(partial)} characters, marked interrupted; cache untouched ({len(cache)} files)")


def test_a_reply_streaming_when_the_app_is_told_to_stop_is_saved_whole(tmp_path, demo_models_dir):
    """QA: SIGTERM (what a Space, docker stop or systemd sends) ended the app at once, as kill -9 does: a
    reply streaming then lost what it had written since its last save (up to 0.5 s). Ctrl-C let it end."""
    data = tmp_path / "data"
    for attempt in range(3):  # a reply that ends between the look and the signal: again, in a new session
        app = start_app(data, demo_models_dir, "--max-tokens", "2000", "--no-draft", log_name=f"run-{attempt}.log")
        app.wait_for_chat()
        session, sent, stop = Client(app.url, verbose=False).predict(api_name="/new_session"), [], threading.Event()
        chatter = threading.Thread(target=keep_chatting, args=(app.url, session, sent, stop), daemon=True)
        chatter.start()
        db = sqlite3.connect(app.db_path)
        seen = None
        while chatter.is_alive() and seen is None and len(sent) < 100:
            seen = db.execute("select id, content from messages where role = 'assistant' and status = 'streaming' "
                              "and length(content) > 0").fetchone()
            time.sleep(0.005)
        stop.set()
        app.proc.terminate()
        assert app.proc.wait(timeout=60) == 0, app.log()[-3000:]
        chatter.join(timeout=60)
        if seen:
            break
    assert seen, "no reply was caught streaming"
    reply_id, partial = seen
    content, status = db.execute("select content, status from messages where id = ?", [reply_id]).fetchone()
    assert status == "complete" and content.startswith(partial) and len(content) > len(partial), (status, app.log()[-2000:])
    assert db.execute("select count(*) from messages where status = 'streaming'").fetchone()[0] == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_clean_stop_leaves_every_chat_and_rating_in_sessions_db_alone(tmp_path, demo_models_dir, signum):
    """QA 23 #1: after a clean stop sessions.db-wal and -shm were still there, and a 👍/👎 given after its reply
    ended lived only in -wal: a copy of sessions.db alone (the README's backup) had the chat, not the rating."""
    data = tmp_path / "data"
    app = start_app(data, demo_models_dir, "--max-tokens", "8", log_name="stop.log")
    app.wait_for_chat()
    client = Client(app.url, verbose=False)
    session = client.predict(api_name="/new_session")
    for text in ("hello one", "hello two"):
        client.predict(text, session, api_name="/chat")
    liked = {client.predict(session, 1, True, api_name="/feedback"): 1,
             client.predict(session, 3, False, api_name="/feedback"): 0}
    app.proc.send_signal(signum)
    assert app.proc.wait(timeout=60) == 0, app.log()[-3000:]
    assert sorted(p.name for p in data.glob("sessions.db*")) == ["sessions.db", "sessions.db.lock"]
    (tmp_path / "backup").mkdir()
    shutil.copyfile(app.db_path, tmp_path / "backup" / "sessions.db")
    backup = sqlite3.connect(tmp_path / "backup" / "sessions.db")
    assert dict(backup.execute("select message_id, liked from feedback").fetchall()) == liked
    assert backup.execute("select count(*) from messages where session_id = ?", [session]).fetchone()[0] == 4
    backup.close()


@pytest.mark.parametrize("signum, background", [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True)],
                         ids=["SIGTERM", "SIGINT", "SIGINT, started in the background"])
def test_the_app_told_to_stop_while_it_starts_leaves_quietly_and_cleanly(tmp_path, demo_models_dir, signum,
                                                                         background):
    """QA: SIGTERM while the app started (decompressing, loading) ended it with exit code 143, and Ctrl-C
    printed a traceback. Now either one says it stopped, exits 0, and leaves no half-written model file.
    background: started by a script as `python launch.py &`, which a shell starts with SIGINT ignored, SIGINT
    did nothing until the chat was up (then the app's own handler stops it): it started on regardless."""
    models = compressed_copy(demo_models_dir, tmp_path / "models")
    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN) if background else None
    try:
        app = start_app(tmp_path / "data", models)
    finally:
        if background:
            signal.signal(signal.SIGINT, inherited)
    deadline = time.monotonic() + 120
    while app.proc.poll() is None and time.monotonic() < deadline and not list((models / "demo").glob("*.partial")):
        time.sleep(0.0005)  # the first start decompressing a model file
    app.proc.send_signal(signum)
    try:
        assert app.proc.wait(timeout=60) == 0, app.log()[-3000:]
    finally:
        app.kill()  # one that went on starting must not outlive the test (it ran on for good)
    assert "stopped while starting" in app.log() and "Traceback" not in app.log(), app.log()[-3000:]
    assert not list((models / "demo").glob("*.partial"))


def cache_files() -> set[str]:
    """What a finished demo model cache holds: each .gguf.zst, its .gguf and the .gguf's digest."""
    names = [f.file.removesuffix(".zst") for f in get_profile("demo").files]
    return {n + suffix for n in names for suffix in (".zst", "", ".sha256")}


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["build", "decompress"])
def test_kill_9_while_the_first_start_writes_the_model_cache(tmp_path, demo_models_dir, moment):
    """build: the first start on an empty cache is building the demo set (base.gguf.zst written,
    the next file half written); decompress: the cache holds only the .gguf.zst files (as after a
    download) and the first start is decompressing one. The next start cleans up and runs."""
    data, models = tmp_path / "data", tmp_path / "models"
    folder = models / "demo"
    sources = {f.file for f in get_profile("demo").files}

    def caught() -> bool:  # the moment to kill: a file half written, of the right stage
        names = {p.name for p in os.scandir(folder)} if folder.is_dir() else set()
        partials = [n for n in names if n.endswith(".partial")]
        if moment == "build":
            return "base.gguf.zst" in names and any(not n.startswith(".base.") for n in partials)
        return bool(partials)

    for attempt in range(5):
        shutil.rmtree(models, ignore_errors=True)
        if moment == "decompress":
            compressed_copy(demo_models_dir, models)
        app = start_app(data, models, log_name=f"first-{attempt}.log")
        deadline = time.monotonic() + 120
        while app.proc.poll() is None and time.monotonic() < deadline and not caught():
            time.sleep(0.0005)
        app.kill()
        left = sorted(p.name for p in folder.glob("*.partial"))
        if left and (moment == "decompress" or not sources <= {p.name for p in folder.iterdir()}):
            break  # killed with a file half written (not just after it was renamed into place)
    else:
        pytest.fail(f"never caught the model cache being written ({moment})")

    with running_app(data, models, "--max-tokens", "8", log_name="next.log") as (url, _):
        # Nothing half written is left, nothing else either: exactly the finished cache.
        assert {p.name for p in folder.iterdir()} == cache_files()
        store = Store(models, progress=False)
        for f in get_profile("demo").files:
            assert store.is_ready("demo", f), f.name
            assert hash_file(store.model_path("demo", f)) == f.sha256, f.name
        assert Client(url, verbose=False).predict("hello again", api_name="/chat") is not None
    print(f"\ncrash: killed the first start during the {moment} with {left} half written (run {attempt + 1}); "
          f"the next start removed it, finished the cache, verified it and answered")


def test_a_second_app_on_the_same_sessions_db_is_refused_and_names_the_first(tmp_path, demo_models_dir):
    """QA 19: a second app started on the same sessions.db (another port) marked the first one's streaming replies
    interrupted, and two apps then wrote to the same chats unaware of each other, each with the models loaded.
    It stops before reading anything, naming the app that has the file; once that one has stopped, it starts."""
    data = tmp_path / "data"
    first = start_app(data, demo_models_dir)
    try:
        first.wait_for_chat()
        second = start_app(data, demo_models_dir, log_name="second.log")
        try:
            assert second.proc.wait(timeout=60) == 2, second.log()[-2000:]
        finally:
            second.kill()
        said = second.log()
        assert f"pid {first.proc.pid}" in said and first.url in said and "--db" in said, said[-2000:]
        assert "Traceback" not in said and "Loading" not in said
        first.wait_for_chat(timeout=5)  # still serving
    finally:
        first.stop()
    third = start_app(data, demo_models_dir, log_name="third.log")
    try:
        third.wait_for_chat()
    finally:
        third.stop()


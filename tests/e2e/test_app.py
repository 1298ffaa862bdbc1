"""End to end: `python launch.py` in a subprocess on the demo set, driven with gradio_client, then
sessions.db read directly."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client

from models.manifest import get_profile

ROOT = Path(__file__).resolve().parents[2]


def draft_counts(db_path: Path) -> list[int]:
    rows = sqlite3.connect(db_path).execute("select stats from messages where role = 'assistant' order by id")
    return [json.loads(stats)["draft_proposed"] for (stats,) in rows]


def test_chat_through_the_api_lands_in_sessions_db(app):
    url, db_path = app
    client = Client(url, verbose=False)
    session = client.predict(api_name="/new_session")
    first = client.predict("hello <|im_start|>system", session, api_name="/chat")
    second = client.predict("<b>and again</b>", session, api_name="/chat")
    alone = client.predict("a new conversation", api_name="/chat")
    assert first and second and alone

    db = sqlite3.connect(db_path)
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert db.execute("select role, content, status from messages where session_id = ? order by id", [session]).fetchall() == [
        ("user", "hello <|im_start|>system", "complete"), ("assistant", first, "complete"),
        ("user", "<b>and again</b>", "complete"), ("assistant", second, "complete"),
    ]
    assert db.execute("select count(*) from sessions").fetchone()[0] == 2
    assert db.execute("select count(*) from messages where content = ?", [alone]).fetchone()[0] == 1


def test_every_reply_is_routed_and_its_decision_stored(app):
    url, db_path = app
    client = Client(url, verbose=False)
    session = client.predict(api_name="/new_session")
    client.predict("Write a Python function that checks whether a number is prime.", session, api_name="/chat")
    client.predict("and in Rust?", session, "auto", api_name="/chat")
    client.predict("thanks", session, "reasoning", api_name="/chat")
    db = sqlite3.connect(db_path)
    rows = db.execute(
        "select d.route, d.router_choice, d.overridden, d.reason, d.tau_p, d.tokens, m.role, m.stats "
        "from decisions d join messages m on m.id = d.message_id where d.session_id = ? order by d.id", [session]
    ).fetchall()
    assert len(rows) == 3 and all(r[6] == "assistant" for r in rows)
    assert [r[2] for r in rows] == [0, 0, 1] and rows[2][0] == "reasoning"
    assert rows[2][3].startswith("override: you chose reasoning")
    for route, _, _, reason, tau_p, tokens, _, stats in rows:
        assert reason and tokens == json.loads(stats)["tokens"]
        assert (json.loads(stats)["adapter"] or "base") == route
        assert tau_p == get_profile("demo").settings["router"]["tau_p"]  # the profile's calibrated τp


def test_an_unknown_session_id_is_refused_not_replaced_by_a_new_chat(app, tmp_path):
    """A mistyped id started a new session at every call, each without the conversation, and the
    caller never learned the new id. A refusal is the caller's to read, not the log's: each wrote a traceback
    of 30 lines there (QA 19)."""
    url, db_path = app
    db = sqlite3.connect(db_path)
    before = db.execute("select count(*) from sessions").fetchone()[0]
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="There is no chat 'typo-session' here.*/new_session"):  # QA 21: the words of /panel
        client.predict("my name is Zorblax", "typo-session", api_name="/chat")
    assert db.execute("select count(*) from sessions").fetchone()[0] == before
    # QA: /panel answered an empty panel, /feedback "no reply at position 1"; an id was echoed whole
    for call in ({"api_name": "/panel"}, {"index": 1, "liked": True, "api_name": "/feedback"}):
        with pytest.raises(Exception, match="There is no chat 'typo-session' here"):
            client.predict("typo-session", **call)
    with pytest.raises(Exception, match=r"There is no chat 's{40}…' here"):
        client.predict("hello", "s" * 100_000, api_name="/chat")
    with pytest.raises(Exception, match=r"Unknown route 'a{40}…'"):
        client.predict("hello", "", "a" * 100_000, api_name="/chat")
    with pytest.raises(Exception, match="message is text, not int"):
        client.predict(12345, api_name="/chat")
    assert "Traceback" not in (tmp_path / "launch.log").read_text()


@pytest.mark.parametrize("args, words", [
    ((12345,), "message is text, not int"),
    ((["a", "b"],), "message is text, not list"),
    (("hello", 12345), "session_id is text, not int"),
    (("hello", "", 5), "override is text, not int"),
    ((None,), "Type a message first: empty messages are not sent."),  # QA 19: "raised an exception"
])
def test_api_arguments_of_the_wrong_type_are_named(app, args, words):
    """They got Gradio's "The upstream Gradio app has raised an exception" and nothing else."""
    with pytest.raises(Exception) as caught:
        Client(app[0], verbose=False).predict(*args, api_name="/chat")
    assert str(caught.value) == words


@pytest.mark.parametrize("session_id", [5, 0, False, ["a"], 1.5])
def test_a_session_id_that_is_not_text_is_named_by_panel_and_feedback(app, session_id):
    client = Client(app[0], verbose=False)
    words = f"session_id is text, not {type(session_id).__name__}"
    with pytest.raises(Exception) as caught:
        client.predict(session_id, api_name="/panel")
    assert str(caught.value) == words  # QA 19: it came quoted, 'session_id is text, not int'
    with pytest.raises(Exception) as caught:
        client.predict(session_id, 1, True, api_name="/feedback")
    assert str(caught.value) == words


def test_the_page_says_these_are_demo_weights(app):
    url, _ = app
    config = urllib.request.urlopen(url + "config", timeout=10).read().decode()
    assert "demo weights: replies are random text" in config
    # and says how to start a real set (QA 23: "see README" named neither), with a profile the manifest has
    profile, gigabytes = re.search(r"python launch\.py --profile ([\w.-]+)` \(a ([\d.]+) GB download", config).groups()
    files = get_profile(profile).files
    assert not get_profile(profile).demo and float(gigabytes) == round(sum(f.size or 0 for f in files) / 1e9, 1)


def test_an_empty_message_gets_a_hint_not_a_reply(app):
    url, db_path = app
    with pytest.raises(Exception, match="empty messages are not sent"):
        Client(url, verbose=False).predict("   ", api_name="/chat")
    assert sqlite3.connect(db_path).execute("select count(*) from messages").fetchone()[0] == 0


def compressed_demo_copy(demo_models_dir: Path, models: Path) -> Path:
    """A models dir holding only the demo set's .gguf.zst files, to be damaged by a test."""
    (models / "demo").mkdir(parents=True)
    for src in (demo_models_dir / "demo").glob("*.zst"):
        (models / "demo" / src.name).write_bytes(src.read_bytes())
    return models


def test_a_corrupt_model_file_stops_launch_with_the_file_named(tmp_path, demo_models_dir):
    models = compressed_demo_copy(demo_models_dir, tmp_path / "models")
    base = models / "demo" / "base.gguf.zst"
    data = bytearray(base.read_bytes())
    data[len(data) // 3] ^= 0x55
    base.write_bytes(bytes(data))
    result = subprocess.run(
        [sys.executable, "launch.py", "--no-browser", "--models-dir", str(models)], cwd=ROOT,
        env={**os.environ, "COGUMI_DATA_DIR": str(tmp_path)}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert f"{base}:" in result.stderr and ("SHA-256 mismatch" in result.stderr or "zstd data is damaged" in result.stderr)
    assert not (models / "demo" / "base.gguf").exists()
    assert not list((models / "demo").glob("*.partial"))


def test_a_corrupt_modifier_leaves_only_that_modifier_out(tmp_path, demo_models_dir, launch_app):
    models = compressed_demo_copy(demo_models_dir, tmp_path / "models")
    code = models / "demo" / "code.gguf.zst"
    code.write_bytes(code.read_bytes()[:-5000])  # truncated
    with launch_app(tmp_path, models) as (url, _):
        config = urllib.request.urlopen(url + "config", timeout=10).read().decode()
        assert "Modifiers not available" in config and "code.gguf.zst" in config
        # QA: the Route control offered it as the others, and only the notice after sending said it was not there
        (route,) = [c for c in json.loads(config)["components"] if c.get("props", {}).get("elem_id") == "route"]
        assert route["props"]["choices"] == [["auto", "auto"], ["base", "base"], ["code (not available: base)", "code"],
                                             ["reasoning", "reasoning"], ["automation", "automation"]]
        client = Client(url, verbose=False)
        assert client.predict("hi", "", "code", api_name="/chat")
        assert client.predict("hi", "", "reasoning", api_name="/chat")
        db = sqlite3.connect(tmp_path / "sessions.db")
        adapters = [json.loads(s)["adapter"] for (s,) in db.execute("select stats from messages where role = 'assistant' order by id")]
        assert adapters == [None, "reasoning"]


def test_speculative_decoding_is_on_by_default_and_off_with_no_draft(tmp_path, demo_models_dir, launch_app):
    for args, drafted in (((), True), (("--no-draft",), False)):
        data = tmp_path / ("plain" if args else "draft")
        data.mkdir()
        with launch_app(data, demo_models_dir, *args) as (url, db_path):
            client = Client(url, verbose=False)
            for i in range(3):
                client.predict(f"message {i}", api_name="/chat")
        counts = draft_counts(db_path)
        assert len(counts) == 3 and (max(counts) > 0) == drafted, (args, counts)


def test_the_terminal_gives_the_apps_address_and_says_where_the_chats_are_at_ctrl_c(tmp_path, demo_models_dir):
    """QA 22 #5: the terminal said "To create a public link, set `share=True` in `launch()`", an instruction for
    Gradio's code, not for this app (its option is --share); and Ctrl-C ended it without a word."""
    import signal

    from tests.launcher import start_app

    app = start_app(tmp_path / "data", demo_models_dir)
    try:
        app.wait_for_chat()
        time.sleep(0.5)  # the line is printed as the chat starts to answer
        log = app.log()
        assert f"Cogumi Chat is running on {app.url.rstrip('/')}" in log and "--share" in log, log[-2000:]
        assert "share=True" not in log and "launch()" not in log
        assert " httpx: " not in log, log[-2000:]  # QA 23: the libraries' own INFO lines (Gradio's requests to itself)
        app.proc.send_signal(signal.SIGINT)
        assert app.proc.wait(timeout=60) == 0
        assert f"stopped; your chats are kept in {app.db_path}" in app.log()
    finally:
        if app.proc.poll() is None:
            app.proc.kill()


def test_a_stop_after_the_router_loaded_prints_no_torch_lines(tmp_path):
    """QA 23 #3: stopped while starting, once torch was loaded, the terminal ended with torch's own INFO lines
    ("FakeTensor cache stats: cache_hits: 0 ..."), which it logs as the interpreter exits. The app's own INFO
    lines stay."""
    script = ("import logging, sys, launch; launch.configure_logging(); import torch._subclasses.fake_tensor; "
              "logging.getLogger('app.chat').info('the app says this'); sys.exit(0)")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "the app says this" in done.stderr, done.stderr
    assert "FakeTensor" not in done.stderr and "torch" not in done.stderr, done.stderr


def test_a_line_of_huggingface_hub_is_printed_once(tmp_path):
    """QA 24 #2: offline, each of the Hub client's retries was printed twice, bare by its own handler and again
    through the app's."""
    script = ("import launch; launch.configure_logging(); from huggingface_hub.utils import logging; "
              "logging.get_logger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr.count("Retrying in 1s") == 1, done.stderr


def test_a_spaces_profile_setting_is_read_trimmed_and_named_when_unknown(monkeypatch):
    """QA 24: COGUMI_PROFILE=' qwen2.5-1.5b' (a space pasted in the Space's settings) was "No model profile named
    ' qwen2.5-1.5b'", and the message did not say the name came from COGUMI_PROFILE."""
    import launch
    from models.errors import ModelFileError

    monkeypatch.setenv("COGUMI_PROFILE", " demo\n")
    assert launch.choose_profile(launch.parse_args([]), space=True).name == "demo"
    monkeypatch.setenv("COGUMI_PROFILE", "")  # QA 25: a value cleared in the Space's settings is set, and empty
    assert launch.choose_profile(launch.parse_args([]), space=True).name == launch.SPACES_PROFILE
    monkeypatch.setenv("COGUMI_PROFILE", "qwen-nope")
    with pytest.raises(ModelFileError) as err:
        launch.choose_profile(launch.parse_args([]), space=True)
    assert str(err.value).startswith("COGUMI_PROFILE (the Space's setting): No model profile named 'qwen-nope'")

"""python -m router.history --export: routing history from a real sessions.db becomes rows in the
router's training formats, which router.evaluate reads back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def export(service, tmp_path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """router.history --export run on the service's sessions.db: its run, and the rows it wrote."""
    out = tmp_path / "history.jsonl"
    result = run("router.history", "--export", str(out), "--db", service.memory.path)
    assert result.returncode == 0, result.stderr
    return result, [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_overrides_feedback_and_escalations_are_exported(routed_service, tmp_path):
    service = routed_service
    *_, one = service.respond(None, "Write a SQL query that lists customers without orders.")
    sid = one.session_id
    *_, two = service.respond(sid, "Plan my week: 3 gym days, never two in a row", override="automation")
    *_, three = service.respond(sid, "no, that is wrong, it does not work at all")  # the router escalates
    *_, four = service.respond(sid, "thanks, that helps")
    service.give_feedback(sid, 1, True)    # 👍 on reply one → (reply one, message two) is not a complaint
    service.give_feedback(sid, 5, False)   # 👎 on reply three → (reply three, "thanks…") is one, by the user's word
    assert three.decision.rule == "escalation"

    result, rows = export(service, tmp_path)
    domain = [r for r in rows if r["kind"] == "domain"]
    escalation = [r for r in rows if r["kind"] == "escalation"]
    assert [(r["text"], r["label"], r["source"], r["router_choice"]) for r in domain] == [
        ("Plan my week: 3 gym days, never two in a row", "automation", "override", two.decision.router_choice)]
    assert [(r["previous_answer"], r["text"], r["label"], r["source"]) for r in escalation] == [
        (one.text, "Plan my week: 3 gym days, never two in a row", 0, "like"),
        (two.text, "no, that is wrong, it does not work at all", 1, "router"),
        (three.text, "thanks, that helps", 1, "dislike"),
    ]
    assert all(r["session_id"] == sid for r in rows)
    assert "1 domain/override" in result.stdout and "1 escalation/dislike" in result.stdout

    out = tmp_path / "history.jsonl"
    report = run("router.evaluate", "--domain", str(out), "--escalation", str(out))
    assert report.returncode == 0, report.stderr
    parsed = json.loads(report.stdout)
    assert sum(parsed["domain"]["confusion"]["automation"].values()) == 1  # the one override row, nothing else
    assert set(parsed["escalation"]) == {"f1", "precision", "recall", "fpr"}


@pytest.mark.parametrize("rows", ["stored", "older"])
def test_an_override_held_for_later_messages_labels_only_the_message_it_was_picked_for(routed_service, tmp_path, rows):
    """QA 24 #3: the Route choice holds for the following messages until it is changed, and every message sent
    under it was exported as a hand-made label ("Write a python function…" labelled automation). Rows stored
    before decisions.override_held (NULL) are worked out from the decisions before them, as they were."""
    service = routed_service
    *_, picked = service.respond(None, "What is 17 times 23?", override="automation")
    sid = picked.session_id
    list(service.respond(sid, "Write a python function to reverse a list", override="automation"))  # held
    list(service.respond(sid, "Now sort it by length", override="code"))  # picked anew
    list(service.respond(None, "Book a meeting with Ana on Monday", override="automation"))  # another chat
    # QA 25 #1: the choice holds across New chat and opening a past chat too, so a chat's first message can be held
    list(service.respond(None, "Remind me to call Bo at five", override="automation"))
    if rows == "older":
        service.memory.db.execute("update decisions set override_held = null")
        service.memory.db.conn.commit()

    result, rows = export(service, tmp_path)
    assert [(r["text"], r["label"]) for r in rows if r["kind"] == "domain"] == [
        ("What is 17 times 23?", "automation"), ("Now sort it by length", "code"),
        ("Book a meeting with Ana on Monday", "automation")]
    assert "2 messages sent under a route picked for an earlier one left out" in result.stdout


def test_a_held_override_stays_held_after_the_chat_it_was_picked_in_is_deleted(routed_service, tmp_path):
    """QA 26 #1: whether a pick was held was worked out from the decisions still stored, so deleting the chat of
    the message it was picked for turned the next chat's held message into a label."""
    service = routed_service
    *_, picked = service.respond(None, "HELD one: in chat 1", override="automation")
    *_, held = service.respond(None, "HELD two: in chat 2, pick held", override="automation")
    service.delete_session(picked.session_id)

    result, rows = export(service, tmp_path)
    assert [r for r in rows if r["kind"] == "domain"] == []
    assert "1 message sent under a route picked for an earlier one left out" in result.stdout


def test_an_override_to_a_modifier_not_available_is_labelled_as_picked(routed_service, demo_set, tmp_path):
    """QA: picking reasoning or automation where that modifier was not loaded stored route base, and the
    export labelled the message "general", the opposite of what the person said."""
    from app.chat import ChatService
    from models.engine import Engine

    engine = Engine(demo_set["base"], n_ctx=512, modifiers={"code": (demo_set["code"], 1.0)})
    service = ChatService(engine, routed_service.memory, routed_service.settings, router=routed_service.router,
                          unavailable={"reasoning": "reasoning.gguf: missing.", "automation": "automation.gguf: missing."})
    *_, proof = service.respond(None, "prove that 17 is prime step by step", override="reasoning")
    *_, cron = service.respond(proof.session_id, "schedule a cron job every Monday", override="automation")
    *_, plain = service.respond(proof.session_id, "hello there", override="base")
    assert proof.decision.route == cron.decision.route == "base"

    _, rows = export(service, tmp_path)
    assert [(r["text"], r["label"]) for r in rows if r["kind"] == "domain"] == [
        ("prove that 17 is prime step by step", "reasoning"), ("schedule a cron job every Monday", "automation"),
        ("hello there", "general")]


def test_a_missing_database_is_named(tmp_path):
    result = run("router.history", "--export", str(tmp_path / "out.jsonl"), "--db", str(tmp_path / "nope.db"))
    assert result.returncode == 2 and "nope.db: no such sessions database" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_an_export_path_that_cannot_be_written_is_named(routed_service, tmp_path, where):
    """QA: --export onto a directory was a traceback (IsADirectoryError)."""
    *_, reply = routed_service.respond(None, "Write a SQL query for the top customers.", override="code")
    (tmp_path / "afile").write_text("x")
    out = tmp_path if where == "a directory" else tmp_path / "afile" / "out.jsonl"
    result = run("router.history", "--export", str(out), "--db", str(routed_service.memory.path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"error: {out}: cannot write the export (" in result.stderr


def test_an_export_onto_the_database_itself_is_refused(routed_service, tmp_path):
    """QA: --export given the sessions.db's own path wrote the rows over it, and every chat was lost."""
    *_, reply = routed_service.respond(None, "Write a SQL query for the top customers.", override="code")
    db = routed_service.memory.path
    before = Path(db).read_bytes()
    for export in (str(db), str(Path(db).parent / "." / Path(db).name)):
        result = run("router.history", "--export", export, "--db", str(db))
        assert result.returncode == 2 and "is the sessions database itself" in result.stderr, result.stderr
    assert Path(db).read_bytes() == before

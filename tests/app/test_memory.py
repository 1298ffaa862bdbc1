"""sessions.db: numbered migrations, persistence across restarts, interrupted replies kept."""

from __future__ import annotations

import sqlite3

from app.memory import MIGRATIONS, Memory, migrate


def test_migrations_run_once_on_an_in_memory_database():
    memory = Memory(":memory:")
    applied = [r["name"] for r in memory.db["_migrations"].rows]
    assert applied == [fn.__name__ for fn in MIGRATIONS]
    migrate(memory.db)  # safe to run again
    assert [r["name"] for r in memory.db["_migrations"].rows] == applied
    assert {"sessions", "messages"} <= set(memory.db.table_names())


def test_sessions_and_messages_persist_across_a_restart(tmp_path):
    path = tmp_path / "sessions.db"
    memory = Memory(path)
    sid = memory.new_session()
    memory.add_message(sid, "user", "first question, quite a long one that makes the title " * 3)
    reply = memory.add_message(sid, "assistant", "", status="streaming")
    memory.update_message(reply, content="the answer", status="complete", stats={"tokens": 2})
    memory.db.conn.close()

    reopened = Memory(path)
    assert [(m["role"], m["content"], m["status"]) for m in reopened.messages(sid)] == [
        ("user", "first question, quite a long one that makes the title " * 3, "complete"),
        ("assistant", "the answer", "complete"),
    ]
    assert reopened.messages(sid)[1]["stats"] == {"tokens": 2}
    (session,) = reopened.list_sessions()
    assert session["id"] == sid and session["title"].startswith("first question") and len(session["title"]) <= 61
    assert sqlite3.connect(path).execute("pragma journal_mode").fetchone()[0] == "wal"


def test_a_reply_cut_off_by_a_crash_is_kept_and_marked_interrupted(tmp_path):
    memory = Memory(tmp_path / "sessions.db")
    sid = memory.new_session()
    memory.add_message(sid, "user", "hi")
    reply = memory.add_message(sid, "assistant", "", status="streaming")
    memory.update_message(reply, content="half a rep")
    reopened = Memory(tmp_path / "sessions.db")
    assert reopened.interrupted == 1
    assert reopened.messages(sid)[-1]["status"] == "interrupted"
    assert reopened.messages(sid)[-1]["content"] == "half a rep"


def test_recent_returns_the_last_turns_oldest_first():
    memory = Memory(":memory:")
    sid = memory.new_session()
    for i in range(8):
        memory.add_message(sid, "user", f"q{i}")
        memory.add_message(sid, "assistant", f"a{i}")
    assert [m["content"] for m in memory.recent(sid, n=2)] == ["q6", "a6", "q7", "a7"]

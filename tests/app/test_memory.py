"""sessions.db: numbered migrations, persistence across restarts, interrupted replies kept."""

from __future__ import annotations

import sqlite3

import pytest

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


def decision(route="code", **kw) -> dict:
    return {"route": route, "router_choice": route, "overridden": False, "rule": "domain", "reason": "because",
            "perplexity": 21.5, "tau_p": 12.4, "tau_p_calibrated": True, "escalation_p": 0.1, "tau_e": 0.5,
            "domain": "code", "domain_probs": {"code": 0.9, "reasoning": 0.05, "automation": 0.03, "general": 0.02},
            "tau_d": 0.8, "session_escalations": 0, "routing_ms": 7.5, **kw}


def test_decisions_are_stored_per_assistant_turn_with_their_stats(tmp_path):
    memory = Memory(tmp_path / "sessions.db")
    sid = memory.new_session()
    memory.add_message(sid, "user", "fix my regex")
    reply = memory.add_message(sid, "assistant", "", status="streaming")
    memory.add_decision(sid, reply, decision(route="automation", overridden=True))
    memory.add_decision_stats(reply, {"ttft_ms": 12.0, "tokens_per_s": 300.0, "draft_proposed": 8,
                                      "draft_accepted": 6, "tokens": 40, "stop_reason": "eos"})
    memory.db.conn.close()
    (row,) = Memory(tmp_path / "sessions.db").decisions(sid)
    assert row["message_id"] == reply and row["session_id"] == sid
    assert (row["route"], row["router_choice"], row["overridden"]) == ("automation", "automation", True)
    assert row["domain_probs"]["code"] == 0.9 and row["tau_p"] == 12.4 and row["routing_ms"] == 7.5
    assert (row["ttft_ms"], row["tokens_per_s"], row["draft_proposed"], row["draft_accepted"]) == (12.0, 300.0, 8, 6)


def test_last_decisions_are_the_most_recent_oldest_first():
    memory = Memory(":memory:")
    sid = memory.new_session()
    for route in ("base", "code", "reasoning", "automation"):
        memory.add_message(sid, "user", "q")
        memory.add_decision(sid, memory.add_message(sid, "assistant", "a"), decision(route=route))
    assert [d["route"] for d in memory.decisions(sid, last=2)] == ["reasoning", "automation"]


def test_a_database_from_before_the_router_gains_the_decisions_table(tmp_path):
    path = tmp_path / "sessions.db"
    import sqlite_utils

    from app.memory import m001_sessions_and_messages
    old = sqlite_utils.Database(path)
    old["_migrations"].create({"name": str, "applied_at": str}, pk="name")
    m001_sessions_and_messages(old)
    old["_migrations"].insert({"name": "m001_sessions_and_messages", "applied_at": "2026-11-01"})
    old["sessions"].insert({"id": "s1", "title": "old chat", "created_at": "x", "updated_at": "x"})
    old.conn.close()
    memory = Memory(path)
    assert "decisions" in memory.db.table_names() and memory.session("s1")["title"] == "old chat"


def test_decisions_carry_the_user_message_they_routed():
    memory = Memory(":memory:")
    sid = memory.new_session()
    for text in ("first <b>question</b>", "second"):
        memory.add_message(sid, "user", text)
        memory.add_decision(sid, memory.add_message(sid, "assistant", "a"), decision())
    assert [d["message"] for d in memory.decisions(sid)] == ["first <b>question</b>", "second"]
    assert [d["message"] for d in memory.decisions(sid, last=1)] == ["second"]


def test_route_counts_per_session_and_over_all_sessions():
    memory = Memory(":memory:")
    one, two = memory.new_session(), memory.new_session()
    for sid, route in ((one, "code"), (one, "code"), (one, "base"), (two, "reasoning")):
        memory.add_message(sid, "user", "q")
        memory.add_decision(sid, memory.add_message(sid, "assistant", "a"), decision(route=route))
    assert memory.route_counts(one) == {"code": 2, "base": 1}
    assert memory.route_counts(two) == {"reasoning": 1}
    assert memory.route_counts() == {"code": 2, "base": 1, "reasoning": 1}


def test_feedback_is_one_row_per_reply_the_latest_click_wins_and_can_be_taken_back(tmp_path):
    memory = Memory(tmp_path / "sessions.db")
    sid = memory.new_session()
    question = memory.add_message(sid, "user", "q")
    reply = memory.add_message(sid, "assistant", "a")
    memory.add_decision(sid, reply, decision())
    memory.set_feedback(reply, True)
    memory.set_feedback(reply, False)
    stored = sqlite3.connect(tmp_path / "sessions.db").execute("select message_id, session_id, liked from feedback")
    assert stored.fetchall() == [(reply, sid, 0)]
    assert Memory(tmp_path / "sessions.db").decisions(sid)[0]["liked"] is False
    memory.set_feedback(reply, None)
    assert memory.decisions(sid)[0]["liked"] is None
    with pytest.raises(ValueError, match="not an assistant reply"):
        memory.set_feedback(question, True)


def test_past_chats_beyond_the_most_recent_are_found_by_what_they_say():
    """Only the 50 most recent chats were listed, and nothing reached the others."""
    memory = Memory(":memory:")
    ids = []
    for i in range(60):
        ids.append(memory.new_session(owner="me" if i % 2 else "other"))
        memory.add_message(ids[-1], "user", f"question {i}")
        memory.add_message(ids[-1], "assistant", "a banana split" if i == 3 else f"answer {i}")
    memory.add_message(ids[5], "user", "is it 100% sure?")
    memory.add_message(ids[7], "user", "is it 1000 sure?")
    recent = [ids[7], ids[5]] + [ids[i] for i in range(59, -1, -1) if i not in (5, 7)][:48]
    assert {s["id"] for s in memory.list_sessions()} == set(recent)  # ids[3] is not among them
    assert [s["id"] for s in memory.list_sessions(matching="BANANA")] == [ids[3]]  # in a reply, any case
    assert [s["id"] for s in memory.list_sessions(matching="question 1")] == [ids[i] for i in range(19, 9, -1)] + [ids[1]]
    assert [s["id"] for s in memory.list_sessions(matching="100%")] == [ids[5]]  # % and _ are what they are
    assert [s["id"] for s in memory.list_sessions(matching="question 3", owner="me")] == [ids[i] for i in (39, 37, 35, 33, 31, 3)]
    assert len(memory.list_sessions(matching="  ")) == 50  # blank: the most recent


def test_past_chats_are_found_in_any_case_in_any_alphabet():
    """QA 25: "école" did not find a chat saying "ÉCOLE" (SQLite's LIKE folds the case of ASCII letters only). Every
    search is casefolded, "ẞ" to "ss" too (QA 28: an ASCII one, "istanbul", "STRASSE", was not, and missed "İ",
    "ß")."""
    memory = Memory(":memory:")
    school, street, greek = (memory.new_session() for _ in range(3))
    memory.add_message(school, "user", "Notre ÉCOLE ouvre à 8 h")
    memory.add_message(street, "user", "Die Hauptstraße ist gesperrt")
    memory.add_message(greek, "user", "ΚΑΛΗΜΕΡΑ σε όλους")
    for typed, found in (("école", school), ("HAUPTSTRAẞE", street), ("καλημερα", greek), ("ÉCOLE", school)):
        assert [s["id"] for s in memory.list_sessions(matching=typed)] == [found], typed
    # QA 26: the Turkish İ casefolds to "i" and a combining dot, so "İstanbul" found neither "istanbul" nor "ISTANBUL"
    capital, plain = memory.new_session(), memory.new_session()
    memory.add_message(capital, "user", "İSTANBUL ve Ankara")
    memory.add_message(plain, "user", "a trip to istanbul")
    assert {s["id"] for s in memory.list_sessions(matching="İstanbul")} == {capital, plain}
    # QA 27: its dotless ı never met I ("diyarbakır" missed "DİYARBAKIR"), and an accent typed as a letter and a
    # combining mark (text pasted from macOS file names) missed the same letter typed whole
    city, lake, decomposed = memory.new_session(), memory.new_session(), memory.new_session()
    memory.add_message(city, "user", "DİYARBAKIR kebabı")
    memory.add_message(lake, "user", "IĞDIR yolculuğu")
    memory.add_message(decomposed, "user", "un cafe\u0301 noir")
    for typed, found in (("diyarbakır", city), ("ığdır", lake), ("Iğdır", lake), ("café", decomposed)):
        assert [s["id"] for s in memory.list_sessions(matching=typed)] == [found], typed
    # QA 28: typed on a plain keyboard
    for typed, found in (("istanbul", {capital, plain}), ("DIYARBAKIR", {city}), ("diyarbakir", {city}),
                         ("STRASSE", {street}), ("hauptstrasse", {street})):
        assert {s["id"] for s in memory.list_sessions(matching=typed)} == found, typed


def test_the_list_of_past_chats_can_leave_out_chats_never_written_in():
    """The page lists only chats with a message: one made by the API's /new_session and never used stayed
    listed as "New chat" (QA 19)."""
    memory = Memory(":memory:")
    used, unused, newest = memory.new_session(), memory.new_session(), memory.new_session()
    memory.add_message(used, "user", "a question")
    memory.add_message(newest, "user", "a newer question")
    assert [s["id"] for s in memory.list_sessions(used_only=True)] == [newest, used]
    assert [s["id"] for s in memory.list_sessions(used_only=True, limit=1)] == [newest]
    assert unused in {s["id"] for s in memory.list_sessions()}  # all of them, for the API and the CLI


def test_deleting_a_session_removes_it_and_all_it_holds_and_nothing_else(tmp_path):
    memory = Memory(tmp_path / "sessions.db")
    kept, gone = memory.new_session(), memory.new_session()
    for sid in (kept, gone):
        memory.add_message(sid, "user", "q")
        reply = memory.add_message(sid, "assistant", "a")
        memory.add_decision(sid, reply, decision())
        memory.set_feedback(reply, True)
    memory.delete_session(gone)
    db = sqlite3.connect(tmp_path / "sessions.db")
    for table in ("sessions", "messages", "decisions", "feedback"):
        column = "id" if table == "sessions" else "session_id"
        assert db.execute(f"select {column} from {table} group by {column}").fetchall() == [(kept,)], table
    assert db.execute("pragma foreign_key_check").fetchall() == []
    memory.delete_session(gone)  # gone already: nothing to do, no error


def test_a_db_flag_naming_a_folder_not_made_yet_makes_it(tmp_path):
    """QA 17: `--db new/sessions.db` stopped the app ("unable to open database file"), while
    COGUMI_DATA_DIR naming a folder not made yet was made."""
    from app.memory import SessionStoreError
    from launch import open_memory

    path = tmp_path / "new" / "deeper" / "sessions.db"
    memory = open_memory(path)
    session = memory.new_session()
    memory.add_message(session, "user", "kept")
    assert Memory(path).messages(session)[-1]["content"] == "kept"
    (tmp_path / "a file").write_text("in the way")
    with pytest.raises(SessionStoreError, match="a file.*could not make the folder"):
        open_memory(tmp_path / "a file" / "sessions.db")


def test_sessions_db_alone_holds_every_rating_and_nothing_after_close_is_left_beside_it(tmp_path):
    """QA 23 #1: a 👍/👎 lived only in sessions.db-wal (SQLite moves it into sessions.db at a checkpoint, which
    came only at a reply's end or a delete): a copy of sessions.db alone, the backup the README gives, lost it.
    And a clean stop left -wal and -shm beside it: close() folds them in."""
    import shutil

    path = tmp_path / "sessions.db"
    memory = Memory(path)
    sid = memory.new_session()
    memory.add_message(sid, "user", "a question")
    reply = memory.add_message(sid, "assistant", "an answer")
    memory.checkpoint()  # as a reply's end does
    memory.set_feedback(reply, False)
    (tmp_path / "backup").mkdir()
    shutil.copyfile(path, tmp_path / "backup" / "sessions.db")
    backup = sqlite3.connect(tmp_path / "backup" / "sessions.db")
    assert backup.execute("select message_id, liked from feedback").fetchall() == [(reply, 0)]
    backup.close()
    memory.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup", "sessions.db"]
    assert Memory(path).feedback(sid) == {reply: False}


WRITES = {  # the table a write adds a row to → that write, on a chat with one reply (its message id)
    "sessions": lambda memory, sid, reply: memory.new_session(),
    "messages": lambda memory, sid, reply: memory.add_message(sid, "user", "one more"),
    "decisions": lambda memory, sid, reply: memory.add_decision(sid, reply, decision()),
    "feedback": lambda memory, sid, reply: memory.set_feedback(reply, True),
}


@pytest.mark.parametrize("table", WRITES)
def test_a_table_dropped_while_the_app_runs_is_not_made_again_behind_its_back(tmp_path, table):
    """QA 26 #4: a table dropped by another program while the app ran was made again by sqlite-utils at the next
    write, without its foreign keys and indexes; what it held was gone without a word, and the next start took
    the file as it was. The write fails, naming the table, as a start does (check_ours)."""
    from app.memory import SessionStoreError

    memory = Memory(tmp_path / "sessions.db")
    sid = memory.new_session()
    memory.add_message(sid, "user", "a question")
    reply = memory.add_message(sid, "assistant", "an answer")
    with sqlite3.connect(tmp_path / "sessions.db") as other:
        other.execute("pragma foreign_keys = off")
        other.execute(f"drop table {table}")
    with pytest.raises(SessionStoreError, match=f"the table {table}, which this app made in it, is missing"):
        WRITES[table](memory, sid, reply)
    assert table not in memory.db.table_names()


READS = {  # a read through sqlite-utils' table methods, which give nothing for a table that is not there
    "session": ("sessions", lambda m, sid: m.session(sid)),
    "list_sessions": ("sessions", lambda m, sid: m.list_sessions()),
    "list_sessions matching": ("sessions", lambda m, sid: m.list_sessions(matching="question")),
    "messages": ("messages", lambda m, sid: m.messages(sid)),
    "recent": ("messages", lambda m, sid: m.recent(sid)),
}


@pytest.mark.parametrize("read", READS)
def test_a_read_of_a_table_renamed_while_the_app_runs_is_no_empty_answer(read):
    """QA 30 #3, #4: with sessions or messages renamed by another program, the reads found nothing, so the page said
    "That chat is not there any more: it was deleted", cleared the chat at a 👍, and refused a 👍 as "no reply at
    position 1". They name the table instead, as the other reads do."""
    from app.memory import SessionStoreError

    table, do = READS[read]
    memory = Memory(":memory:")
    sid = memory.new_session()
    memory.add_message(sid, "user", "a question")
    memory.db.execute(f"alter table {table} rename to {table}_aside")
    with pytest.raises(SessionStoreError, match=f"the table {table}, which this app made in it, is missing"):
        do(memory, sid)


def test_a_read_of_a_table_dropped_while_the_app_runs_names_it():
    """QA 27 #1: reads of a dropped table (a chat opened, /panel, the router's recent decisions) said "the session
    database failed (no such table: feedback); check the disk it is on"."""
    from app.memory import SessionStoreError

    memory = Memory(":memory:")
    sid = memory.new_session()
    memory.add_message(sid, "user", "a question")
    memory.db.execute("drop table feedback")
    with pytest.raises(SessionStoreError, match="the table feedback, which this app made in it, is missing: a "
                                                "program or a person changed the file") as caught:
        memory.feedback(sid)  # a chat's 👍/👎, read to draw it
    assert "check the disk" not in str(caught.value)
    assert "saved" not in str(caught.value)  # QA 28 #2: a read said "and replies could not be saved"

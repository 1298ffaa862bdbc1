"""Session memory in SQLite (sessions.db) through sqlite-utils.

Schema changes are numbered migrations in one list, recorded in a `_migrations` table and run on
every open, so opening twice is safe (the simonw/llm way). The database runs in WAL mode so the
panel can read while a reply is being written.

A user's message is committed before generation starts; the assistant row is created at once with
status "streaming" and its text is saved as it grows, so a crash loses at most the last half
second. At the end the status becomes "complete", "stopped" (the user pressed Stop) or "error";
rows still "streaming" at the next start are marked "interrupted".
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import unicodedata
import uuid
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import sqlite_utils

log = logging.getLogger(__name__)
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


def migration(fn: Callable[[sqlite_utils.Database], None]) -> Callable[[sqlite_utils.Database], None]:
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_sessions_and_messages(db: sqlite_utils.Database) -> None:
    db["sessions"].create({"id": str, "title": str, "created_at": str, "updated_at": str}, pk="id")
    db["messages"].create(
        {"id": int, "session_id": str, "role": str, "content": str, "status": str,
         "error": str, "stats": str, "created_at": str},
        pk="id", foreign_keys=[("session_id", "sessions", "id")],
    )
    db["messages"].create_index(["session_id", "id"])


# GenerationStats fields stored beside each decision (they arrive when the reply ends): those m002 made ...
M002_STATS_COLUMNS = {"prompt_tokens": int, "reused_tokens": int, "tokens": int, "ttft_ms": float, "total_ms": float,
                      "tokens_per_s": float, "dropped_turns": int, "stop_reason": str, "adapter": str,
                      "draft_proposed": int, "draft_accepted": int, "draft_acceptance": float}
STATS_COLUMNS = {**M002_STATS_COLUMNS, "drafting": int}  # ... and those later migrations added


@migration
def m002_decisions(db: sqlite_utils.Database) -> None:
    """One row per assistant turn: the router's Decision and the reply's GenerationStats."""
    db["decisions"].create(
        {"id": int, "session_id": str, "message_id": int, "route": str, "router_choice": str, "overridden": int,
         "rule": str, "reason": str, "perplexity": float, "tau_p": float, "tau_p_calibrated": int,
         "escalation_p": float, "tau_e": float, "domain": str, "domain_probs": str, "tau_d": float,
         "session_escalations": int, "routing_ms": float, **M002_STATS_COLUMNS, "created_at": str},
        pk="id", foreign_keys=[("session_id", "sessions", "id"), ("message_id", "messages", "id")],
    )
    db["decisions"].create_index(["session_id", "id"])
    db["decisions"].create_index(["message_id"], unique=True)


@migration
def m003_feedback(db: sqlite_utils.Database) -> None:
    """A 👍/👎 per assistant message (the latest click wins; un-clicking removes the row)."""
    db["feedback"].create(
        {"message_id": int, "session_id": str, "liked": int, "created_at": str},
        pk="message_id", foreign_keys=[("message_id", "messages", "id"), ("session_id", "sessions", "id")],
    )
    db["feedback"].create_index(["session_id"])


@migration
def m004_session_owner(db: sqlite_utils.Database) -> None:
    """Who a session belongs to when many visitors share one app (a Space): a per-browser id, or
    None on a personal machine, where every session is the user's."""
    db["sessions"].add_column("owner", str)
    db["sessions"].create_index(["owner", "updated_at"])


@migration
def m005_decisions_drafting(db: sqlite_utils.Database) -> None:
    """Whether speculative decoding was on for the reply (QA 21: a reply the adaptive drafter proposed nothing
    for read as one with it off). Older rows: NULL, not known."""
    db["decisions"].add_column("drafting", int)


@migration
def m006_decisions_override_held(db: sqlite_utils.Database) -> None:
    """Whether an override repeated the route picked for the owner's message before it, in any chat: the page's
    Route choice holds until it is changed, and router.history exports only the messages a route was picked for.
    Stored as the message is routed (QA 26: worked out later, a deleted chat took the pick before with it). NULL
    where the router chose, and on rows older than this column."""
    db["decisions"].add_column("override_held", int)


# What a database changed by hand is told to do (QA 24, 25: it opened, then every reply failed with "check the disk").
CHANGED_BY_HAND = ("a program or a person changed the file since this app made it. It was left as it is: restore it "
                   "from a backup, move it aside to start a new one, or start with --db OTHER.db.")


def _missing(kind: str, name: str) -> str:
    """A table or column of ours that is not there, as the start (check_ours), a write (Memory._ours) and a read
    (_explain) name it."""
    return f"the {kind} {name}, which this app made in it, is missing"


def check_ours(db: sqlite_utils.Database, path: str) -> None:
    """Refuse, before anything is written, a database this version must not change: one a newer
    version migrated further, another program's (tables, but none of ours), or ours changed by hand."""
    tables = db.table_names()
    if "_migrations" in tables:
        done = {row["name"] for row in db["_migrations"].rows}
        unknown = sorted(done - {fn.__name__ for fn in MIGRATIONS})
        if unknown:
            raise SessionStoreError(f"{path}: made by a newer version of Cogumi Chat (its migrations {', '.join(unknown)} "
                                    f"are not this version's); it was left as it is: update the app, or start with "
                                    f"--db OTHER.db.")
        changed = _changed_by_hand(db, done)
        if changed:
            raise SessionStoreError(f"{path}: {changed}: {CHANGED_BY_HAND}")
    elif tables and set(_schema(MIGRATIONS)) <= set(tables):  # every table ours, and no record of making them
        raise SessionStoreError(f"{path}: the table _migrations, this app's record of the changes it made in it, is "
                                f"missing: {CHANGED_BY_HAND}")
    elif tables:
        raise SessionStoreError(f"{path}: not a Cogumi Chat session database (it has the tables "
                                f"{', '.join(sorted(tables))}); it was left as it is: start with --db OTHER.db.")


def _schema(migrations: list) -> dict[str, list[str]]:
    """table → columns, as the migrations make them, read off the migrations themselves run on an empty database."""
    made = sqlite_utils.Database(memory=True)
    for fn in migrations:
        fn(made)
    return {table: list(made[table].columns_dict) for table in made.table_names()}


def _changed_by_hand(db: sqlite_utils.Database, done: set[str]) -> str | None:
    """What `db` lacks of what the migrations recorded as done made, or holds already of what those still to run
    would make; None if nothing."""
    have = {table: set(db[table].columns_dict) for table in db.table_names()}
    ran = [fn for fn in MIGRATIONS if fn.__name__ in done]
    made = _schema(ran)
    for table, columns in made.items():
        if table not in have:
            return _missing("table", table)
        for column in columns:
            if column not in have[table]:
                return _missing("column", f"{table}.{column}")
    before = made
    for fn in MIGRATIONS:  # those still to run, in order, each on top of all before it
        if fn.__name__ in done:
            continue
        ran.append(fn)
        after = _schema(ran)
        for table, columns in after.items():
            if table not in before and table in have:
                return f"the table {table} is there, but _migrations has no record of {fn.__name__}, which makes it"
            for column in set(columns) - set(before.get(table, [])):
                if column in have.get(table, ()):
                    return (f"the column {table}.{column} is there, but _migrations has no record of {fn.__name__}, "
                            f"which makes it")
        before = after
    return None


def migrate(db: sqlite_utils.Database) -> None:
    if "_migrations" not in db.table_names():
        db["_migrations"].create({"name": str, "applied_at": str}, pk="name")
    done = {row["name"] for row in db["_migrations"].rows}
    for fn in MIGRATIONS:
        if fn.__name__ not in done:
            with db.atomic():
                fn(db)
                db["_migrations"].insert({"name": fn.__name__, "applied_at": _now()})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class SessionStoreError(Exception):
    """sessions.db cannot be opened, read or written; the message names the file and what to do."""


def _explain(path: str, exc: sqlite3.Error) -> str:
    text = str(exc)
    said = text.lower()
    missing = re.search(r"no such (table|column): (?:main\.)?(\S+)", text)
    if missing:  # dropped by another program while the app ran (QA 27: "check the disk it is on")
        return f"{path}: {_missing(missing[1], missing[2])}: {CHANGED_BY_HAND}"
    if "locked" in said or "busy" in said:
        hint = ("another program holds a lock on it (a second Cogumi Chat on the same file, or a database tool in "
                "the middle of a transaction): close that program and try again, or start with --db OTHER.db")
    elif "readonly" in said or "read-only" in said:
        hint = "it cannot be written here: make the file and its folder writable, or start with --db OTHER.db"
    elif "not a database" in said or "malformed" in said:
        hint = ("it is not a SQLite database or it is damaged; it was left as it is: move it aside to start a new "
                "one, or start with --db OTHER.db")
    elif "unable to open" in said:  # a folder, a missing folder, or a folder that cannot be written
        hint = ("it must be a file, not a folder, and it and its folder must exist and be writable (SQLite keeps "
                "its -wal and -shm files beside it); or start with --db OTHER.db")
    else:
        hint = "check the disk it is on (full, removed, read-only?) and try again"
    return f"{path}: the session database failed ({text}); {hint}."


LOCK_WAIT_S = 10.0  # how long a read or write waits for another program's lock before it fails


def held_elsewhere(path: Path | str) -> bool:
    """Whether another program holds a lock on the database at `path` right now, so that opening it
    would wait (Memory's timeout). Asked without waiting; a file it cannot open is Memory's to explain."""
    if not Path(path).is_file():
        return False
    try:
        probe = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=rw", uri=True, timeout=0,
                                isolation_level=None)
    except sqlite3.Error:
        return False
    try:
        probe.execute("begin immediate")
        probe.execute("rollback")
        return False
    except sqlite3.Error as exc:
        return "locked" in str(exc) or "busy" in str(exc)
    finally:
        probe.close()


class Memory:
    def __init__(self, path: Path | str, timeout: float = LOCK_WAIT_S):
        """`timeout`: how long a read or write waits for another program's lock before it fails."""
        self.path = str(path)
        self._timeout_ms = round(timeout * 1000)
        self._lock = threading.RLock()
        conn = None
        try:
            # One connection shared by Gradio's worker threads, serialised by a lock.
            conn = sqlite3.connect(self.path, check_same_thread=False, timeout=timeout)
            conn.create_function("casefold", 1, _casefold, deterministic=True)  # list_sessions' search
            self.db = sqlite_utils.Database(conn)
            with self._lock:
                check_ours(self.db, self.path)
                if self.path != ":memory:":
                    self.db.enable_wal()
                    # In WAL mode NORMAL still keeps every committed row when the app is killed;
                    # only a power cut can lose the last commits. FULL's fsync per commit cost each
                    # message 0.80 ms instead of 0.26 ms, on the way to its first token.
                    self.db.execute("pragma synchronous = normal")
                migrate(self.db)
                self.interrupted = self._mark_interrupted()
        except SessionStoreError:  # check_ours: not this version's file
            conn.close()
            raise
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise SessionStoreError(_explain(self.path, exc)) from exc

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """The connection's lock; SQLite's errors come out as SessionStoreError naming the file."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise SessionStoreError(_explain(self.path, exc)) from exc

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """_guard() around a transaction that takes the write lock as it begins (BEGIN IMMEDIATE), so
        that it waits up to `timeout` for another program's lock. In a plain BEGIN, sqlite-utils reads
        a table's columns before it inserts, and SQLite refuses that read lock's upgrade at once
        (waiting could deadlock): a message was "not sent" the moment a database tool held a lock."""
        with self._guard():
            self.db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.conn.rollback()
                raise
            self.db.conn.execute("COMMIT")

    @contextmanager
    def _not_waiting(self) -> Iterator[None]:
        """Within it, another program's lock fails a statement at once instead of after `timeout`."""
        with self._lock:
            self.db.execute("pragma busy_timeout = 0")
            try:
                yield
            finally:
                self.db.execute(f"pragma busy_timeout = {self._timeout_ms}")

    def locked_elsewhere(self) -> bool:
        """Whether a write now would wait for another program's lock (up to `timeout`), asked without waiting:
        so that the page can say what a message waits for (QA 28: 10 s without a word)."""
        with self._not_waiting():
            try:
                self.db.conn.execute("BEGIN IMMEDIATE")
                self.db.conn.execute("ROLLBACK")
                return False
            except sqlite3.OperationalError as exc:
                return "locked" in str(exc) or "busy" in str(exc)

    def _ours(self, table: str) -> sqlite_utils.db.Table:
        """A table of ours, to read or write through sqlite-utils. It makes a table that is not there: one dropped by
        another program while the app ran came back at the next write without its keys and indexes, what it held
        gone without a word (QA 26 #4); and its reads of one found nothing: chats read as deleted (QA 30 #4).
        Refused instead, as a start refuses the file (check_ours)."""
        if not self.db[table].exists():
            raise SessionStoreError(f"{self.path}: {_missing('table', table)}: {CHANGED_BY_HAND}")
        return self.db[table]

    def _mark_interrupted(self) -> int:
        with self.db.atomic():
            cursor = self.db.execute("update messages set status = 'interrupted' where status = 'streaming'")
        return cursor.rowcount

    # -- sessions -----------------------------------------------------------------------------
    def new_session(self, title: str = "New chat", owner: str | None = None) -> str:
        session_id = uuid.uuid4().hex
        now = _now()
        with self._guard():
            self._ours("sessions").insert({"id": session_id, "title": title, "created_at": now, "updated_at": now,
                                           "owner": owner})
        return session_id

    def session(self, session_id: str) -> dict | None:
        with self._guard():
            rows = list(self._ours("sessions").rows_where("id = ?", [session_id]))
        return rows[0] if rows else None

    def delete_session(self, session_id: str) -> None:
        """The session, its messages, decisions and feedback, in one transaction (none left half gone)."""
        with self._writing():
            for table in ("feedback", "decisions", "messages"):  # what points at a row before the row
                self.db.execute(f"delete from {table} where session_id = ?", [session_id])
            self.db.execute("delete from sessions where id = ?", [session_id])
        self.checkpoint()

    def checkpoint(self) -> None:
        """Write what sessions.db-wal holds into sessions.db, so that sessions.db copied alone (a backup, a
        move to another machine) has it: SQLite does so only every 1,000 pages. Called once a reply has
        ended and after a delete. PASSIVE: it never waits; what another program's reader holds is left
        for the next one, and a failure too: what was written is in sessions.db-wal, kept."""
        if self.path == ":memory:":
            return
        with self._lock:
            try:
                self.db.execute("pragma wal_checkpoint(passive)")
            except sqlite3.Error as exc:
                log.info("%s: checkpoint left for later (%s)", self.path, exc)

    def close(self, wait_s: float = 2.0) -> None:
        """Close the connection, which moves what sessions.db-wal holds into sessions.db and removes -wal and
        -shm (SQLite does so as the last connection closes): a clean stop leaves the one file. A write still
        going after `wait_s` (another program's lock) is left to finish or not; -wal then keeps what it has."""
        if not self._lock.acquire(timeout=wait_s):
            log.info("%s: left open, a write is still waiting", self.path)
            return
        try:
            self.db.conn.close()
        except sqlite3.Error as exc:
            log.info("%s: closed with its -wal kept (%s)", self.path, exc)
        finally:
            self._lock.release()

    def list_sessions(self, limit: int = 50, owner: str | None = None, matching: str | None = None,
                      used_only: bool = False) -> list[dict]:
        """The most recently used sessions: all of them, or only `owner`'s; with `matching`, only those
        whose title or messages hold that text, in any case (QA 25: SQLite's own LIKE folds ASCII letters only, and
        "école" missed "ÉCOLE"); `used_only`: only those with a message (the API's /new_session makes a session
        before its first message, if ever)."""
        where, params = ["exists (select 1 from messages where session_id = sessions.id)"] * used_only, {}
        if owner is not None:
            where.append("owner = :owner")
            params["owner"] = owner
        if matching and matching.strip():
            # Folded in Python, an ASCII search too (QA 28: "istanbul" missed "İSTANBUL", "strasse" "Straße"), where
            # SQLite's LIKE folds ASCII letters only: over 50,000 messages 19-31 -> 114-134 ms a search (non-ASCII
            # 160 -> 127 ms, without the LIKE before it).
            holds = "casefold({0}) like :folded escape '\\'"
            where.append(f"({holds.format('title')} or id in "
                         f"(select session_id from messages where {holds.format('content')}))")
            typed = re.sub(r"([\\%_])", r"\\\1", matching.strip())  # a typed % is a %
            params["folded"] = f"%{_casefold(typed)}%"
        with self._guard():
            return list(self._ours("sessions").rows_where(" and ".join(where) or None, params,
                                                          order_by="updated_at desc, rowid desc", limit=limit))

    # -- messages -----------------------------------------------------------------------------
    def add_message(self, session_id: str, role: str, content: str, status: str = "complete") -> int:
        with self._writing():
            return self._insert_message(session_id, role, content, status)

    def add_turn(self, session_id: str, message: str) -> int:
        """The user's message and its reply's row (empty, "streaming") in one write; returns the reply's id. Apart,
        a message stored whose reply's row failed was said "not sent" and stayed in the chat too."""
        with self._writing():
            self._insert_message(session_id, "user", message, "complete")
            return self._insert_message(session_id, "assistant", "", "streaming")

    def _insert_message(self, session_id: str, role: str, content: str, status: str) -> int:
        """In a write begun by the caller; the first user message titles its session."""
        message_id = self._ours("messages").insert(
            {"session_id": session_id, "role": role, "content": content, "status": status, "created_at": _now()}
        ).last_pk
        updates = {"updated_at": _now()}
        if role == "user" and self._count(session_id, "user") == 1:
            updates["title"] = _title(content)
        self._ours("sessions").update(session_id, updates)
        return message_id

    def discard_unused(self, session_id: str) -> None:
        """Delete a session that holds no message (made for a first message that could not be stored: QA 30 #7);
        one that holds any is left. Without a messages table (renamed by another program) it holds none."""
        with self._writing():
            if self.db["messages"].exists():
                self.db.execute("delete from sessions where id = ? and not exists "
                                "(select 1 from messages where session_id = ?)", [session_id, session_id])
            else:
                self.db.execute("delete from sessions where id = ?", [session_id])

    def update_message(self, message_id: int, content: str | None = None, status: str | None = None,
                       stats: dict | None = None, error: str | None = None, wait: bool = True) -> None:
        """`wait=False`: fail at once on another program's lock, not after `timeout` (a save as a reply streams, on
        the generating thread: the reply stopped growing for 10 s, QA 30 #6)."""
        updates = {k: v for k, v in {"content": content, "status": status, "error": error}.items() if v is not None}
        if stats is not None:
            updates["stats"] = json.dumps(stats)
        with self._guard(), nullcontext() if wait else self._not_waiting():
            self._ours("messages").update(message_id, updates)

    def messages(self, session_id: str) -> list[dict]:
        with self._guard():
            rows = list(self._ours("messages").rows_where("session_id = ?", [session_id], order_by="id"))
        for row in rows:
            row["stats"] = json.loads(row["stats"]) if row["stats"] else None
        return rows

    def recent(self, session_id: str, n: int = 5) -> list[dict]:
        """The last n turns (user + assistant messages) in order, oldest first."""
        with self._guard():
            rows = list(self._ours("messages").rows_where("session_id = ?", [session_id], order_by="id desc",
                                                          limit=2 * n))
        return [{**row, "stats": json.loads(row["stats"]) if row["stats"] else None} for row in reversed(rows)]

    # -- routing decisions --------------------------------------------------------------------
    def add_decision(self, session_id: str, message_id: int, decision: dict) -> int:
        """Store a Decision (as a dict) for the assistant message it routes, before generation."""
        row = {**decision, "session_id": session_id, "message_id": message_id, "created_at": _now(),
               "domain_probs": json.dumps(decision.get("domain_probs", {}))}
        with self._guard():
            return self._ours("decisions").insert(row, alter=False).last_pk

    def escalations(self, session_id: str) -> int:
        """How many of the session's messages the router took for the user's unhappiness with the answer before."""
        with self._guard():
            return self.db.execute("select count(*) from decisions where session_id = ? and escalation_p >= tau_e",
                                   [session_id]).fetchone()[0]

    def last_decision(self, owner: str | None) -> dict | None:
        """The owner's latest decision, in any of their chats (route, reason, overridden), or None."""
        with self._guard():
            rows = list(self.db.query(
                "select route, reason, overridden from decisions where id = (select max(d.id) from decisions d "
                "where d.session_id in (select id from sessions where owner is ?))", [owner]))
        return rows[0] if rows else None

    def add_decision_stats(self, message_id: int, stats: dict) -> None:
        """The reply's GenerationStats, once it has ended."""
        assignments = ", ".join(f"{column} = ?" for column in STATS_COLUMNS)
        with self._writing():
            self.db.execute(f"update decisions set {assignments} where message_id = ?",
                            [stats.get(k) for k in STATS_COLUMNS] + [message_id])

    def decisions(self, session_id: str, last: int | None = None) -> list[dict]:
        """The session's decisions, oldest first, each with the user message it routed (`message`), its
        `turn` as the chat shows it (a message refused before routing has a turn, and no decision) and
        the user's 👍/👎 on the reply (`liked`: True, False or None); `last` keeps only the most recent."""
        sql = ("select d.*, (select u.content from messages u where u.session_id = d.session_id and u.role = 'user' "
               "and u.id < d.message_id order by u.id desc limit 1) as message, "
               "(select count(*) from messages a where a.session_id = d.session_id and a.role = 'assistant' "
               "and a.id <= d.message_id) as turn, "
               "(select f.liked from feedback f where f.message_id = d.message_id) as liked "
               "from decisions d where d.session_id = ? order by d.id desc" + (" limit ?" if last else ""))
        with self._guard():
            cursor = self.db.execute(sql, [session_id, last] if last else [session_id])
            columns = [c[0] for c in cursor.description]
            rows = [dict(zip(columns, values)) for values in cursor.fetchall()]
        for row in rows:
            row["domain_probs"] = json.loads(row["domain_probs"] or "{}")
            row["overridden"] = bool(row["overridden"])
            row["tau_p_calibrated"] = bool(row["tau_p_calibrated"])
            row["liked"] = None if row["liked"] is None else bool(row["liked"])
        return rows[::-1]

    def route_counts(self, session_id: str | None = None, owner: str | None = None) -> dict[str, int]:
        """How many replies ran on each route: in one session, else in all of `owner`'s, else in all."""
        where, params = ("", [])
        if session_id:
            where, params = "where session_id = ?", [session_id]
        elif owner is not None:
            where, params = "where session_id in (select id from sessions where owner = ?)", [owner]
        with self._guard():
            rows = self.db.execute(f"select route, count(*) from decisions {where} group by route", params).fetchall()
        return dict(rows)

    # -- feedback -----------------------------------------------------------------------------
    def set_feedback(self, message_id: int, liked: bool | None) -> None:
        """Store 👍 (True) or 👎 (False) on an assistant message; None takes it back."""
        with self._writing():
            row = self.db.execute("select session_id, role from messages where id = ?", [message_id]).fetchone()
            if row is None or row[1] != "assistant":
                raise ValueError(f"message {message_id} is not an assistant reply")
            if liked is None:
                self.db.execute("delete from feedback where message_id = ?", [message_id])
            else:
                self._ours("feedback").upsert({"message_id": message_id, "session_id": row[0], "liked": int(liked),
                                               "created_at": _now()}, pk="message_id")
        self.checkpoint()  # a rating comes after its reply's end: else only sessions.db-wal held it (QA 23)

    def feedback(self, session_id: str) -> dict[int, bool]:
        """The session's 👍 (True) and 👎 (False), by assistant message id."""
        with self._guard():
            rows = self.db.execute("select message_id, liked from feedback where session_id = ?", [session_id])
            return {message_id: bool(liked) for message_id, liked in rows.fetchall()}

    def _count(self, session_id: str, role: str) -> int:
        return self.db.execute(
            "select count(*) from messages where session_id = ? and role = ?", [session_id, role]
        ).fetchone()[0]


# Left out of a title, kept in the message. Bidirectional controls (embeddings, overrides, isolates,
# marks) turn the list's text around ("a\u202eRTL" showed as "aLTR"), which could disguise a chat's name;
# control characters that are not white space (NUL, ESC, DEL, C1) showed as missing-character boxes;
# a terminal escape sequence goes whole (ECMA-48: CSI parameters and final byte, an OSC string to its
# BEL or ST, or ESC and one byte), as a pasted colour code left "[31m". Zero-width spaces, the word joiner and
# a BOM take room in the list and show nothing (a joiner that joins, in 👨‍👩‍👧, stays). A code fence's line
# ("```python", "~~~") is markdown's, not the person's words.
_HIDDEN_IN_TITLE = re.compile("(?:\x1b\\[|\x9b)[0-?]*[ -/]*[@-~]|(?:\x1b\\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\\\|\x9c)"
                              "|\x1b[ -~]?|[\u061c\u200b\u200e\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff"
                              "\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]|^[ \t]*(?:`{3,}|~{3,})[^\n]*$", re.M)


def _casefold(text: str | None) -> str | None:
    """Case folded for a search, each accented letter one character (NFC: pasted from macOS file names, "é" was
    "e" and a combining accent; QA 27). Turkish folds to the plain i: İ casefolds to "i" and a combining dot (QA 26),
    and the dotless ı is I's lower case ("diyarbakır" for "DİYARBAKIR", QA 27). The NFC costs 124 -> 133 ms over
    50,000 messages."""
    if not isinstance(text, str):
        return text
    return unicodedata.normalize("NFC", text).casefold().replace("i\u0307", "i").replace("ı", "i")


def _title(text: str) -> str:
    line = " ".join(_HIDDEN_IN_TITLE.sub("", text).split())
    return line[:60] + ("…" if len(line) > 60 else "") or "New chat"

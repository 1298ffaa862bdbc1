"""Eight people at once: eight gradio_client clients, each in its own session, send 20 messages
each at the same time to one `python launch.py` on the demo set. One engine serves them all: the
requests queue, every reply lands in its own session and nowhere else, and no two replies were
ever generated at the same time. Measured figures (wall time, throughput, queue depth) are
printed, never asserted."""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import pytest
from gradio_client import Client

CLIENTS = 8
MESSAGES = 20
MAX_TOKENS = 8  # short replies keep the suite fast; the queueing is the same at any length


def one_client(url: str, index: int, start: threading.Barrier) -> dict:
    """A person: open a session, then send MESSAGES unique messages one after another, each as
    soon as the previous reply is back. Errors are collected, not raised, so every client runs.
    Each request goes through its own gradio_client Client (its own event stream): with one Client
    for all 20, gradio_client 2.7.2 once raised CancelledError for a reply the app had finished and
    stored (its shared stream closed as the next request joined it), 1 request in ~1,000."""
    with closing(Client(url, verbose=False)) as client:
        session = client.predict(api_name="/new_session")
    tag = secrets.token_hex(4)
    turns, errors = [], []
    start.wait()
    for i in range(MESSAGES):
        message = f"client {index} message {i} [{tag}]: what comes after {i}?"
        sent = time.time()
        try:
            with closing(Client(url, verbose=False)) as client:
                reply = client.predict(message, session, api_name="/chat")
        except Exception as exc:  # noqa: BLE001 - counted and shown
            errors.append(f"client {index} message {i}: {type(exc).__name__}: {exc}")
            continue
        turns.append({"message": message, "reply": reply, "sent": sent, "received": time.time()})
    return {"session": session, "turns": turns, "errors": errors}


@pytest.mark.slow
def test_eight_clients_at_once_each_reply_in_its_own_session_and_none_interleaved(tmp_path, demo_models_dir,
                                                                                  launch_app):
    with launch_app(tmp_path, demo_models_dir, "--max-tokens", str(MAX_TOKENS)) as (url, db_path):
        start = threading.Barrier(CLIENTS + 1)
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(one_client, url, i, start) for i in range(CLIENTS)]
            start.wait(timeout=120)
            began = time.time()
            results = [f.result() for f in futures]
        wall_s = time.time() - began

        errors = [e for r in results for e in r["errors"]]
        assert errors == [], errors
        assert len({r["session"] for r in results}) == CLIENTS

        db = sqlite3.connect(db_path)
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
        assert db.execute("pragma foreign_key_check").fetchall() == []
        counts = {t: db.execute(f"select count(*) from {t}").fetchone()[0] for t in ("sessions", "messages", "decisions")}
        assert counts == {"sessions": CLIENTS, "messages": 2 * CLIENTS * MESSAGES, "decisions": CLIENTS * MESSAGES}

        # Every session holds exactly its own 20 messages in order, each followed by its reply,
        # complete, with the text its client received; the reply's decision is in the same session.
        for r in results:
            rows = db.execute("select id, role, content, status, stats from messages where session_id = ? order by id",
                              [r["session"]]).fetchall()
            expected = [x for t in r["turns"] for x in (("user", t["message"], "complete"),
                                                        ("assistant", t["reply"], "complete"))]
            assert [row[1:4] for row in rows] == expected
            replies = rows[1::2]
            decided = db.execute("select message_id, session_id, tokens from decisions where message_id in "
                                 f"({','.join('?' * len(replies))}) order by message_id", [row[0] for row in replies])
            assert [(d[0], d[1], d[2]) for d in decided] == [
                (row[0], r["session"], json.loads(row[4])["tokens"]) for row in replies]

        # One engine, one reply at a time: the engine's own start and end stamps of the 160
        # replies (GenerationStats.started_at/ended_at, stored with each reply), in start order,
        # never overlap. Interleaved tokens would need two replies on the engine at once.
        spans = sorted((s["started_at"], s["ended_at"]) for (stats,) in db.execute(
            "select stats from messages where role = 'assistant'") for s in [json.loads(stats)])
        assert len(spans) == CLIENTS * MESSAGES and all(0 < a <= b for a, b in spans)
        overlaps = [(p, q) for p, q in zip(spans, spans[1:]) if q[0] < p[1]]
        assert overlaps == [], f"{len(overlaps)} replies started before the previous one ended"

        # And they really were at the same time: while the engine generated a reply, other
        # clients' requests were waiting in the queue.
        requests = [(t["sent"], t["received"]) for r in results for t in r["turns"]]
        waiting = [sum(sent <= a and received >= b for sent, received in requests) - 1 for a, b in spans]
        assert max(waiting) >= 1

        tokens = sum(json.loads(s)["tokens"] for (s,) in db.execute("select stats from messages where role = 'assistant'"))
        engine_s = sum(b - a for a, b in spans)
        gaps = sorted(q[0] - p[1] for p, q in zip(spans, spans[1:]))
        routing_ms, ttft_ms, prompt, reused = db.execute(
            "select avg(routing_ms), avg(ttft_ms), avg(prompt_tokens), avg(reused_tokens) from decisions").fetchone()
        print(f"\nconcurrency: {CLIENTS} clients x {MESSAGES} messages, max_tokens {MAX_TOKENS}: wall {wall_s:.1f} s, "
              f"{CLIENTS * MESSAGES / wall_s:.2f} replies/s, {tokens / wall_s:.1f} generated tokens/s "
              f"({tokens} tokens), engine busy generating {engine_s:.1f} s ({engine_s / wall_s:.0%} of wall), "
              f"requests waiting while a reply generated: mean {sum(waiting) / len(waiting):.1f}, max {max(waiting)}; "
              f"gap between one reply's end and the next one's start: min {gaps[0] * 1000:.0f} ms, median "
              f"{gaps[len(gaps) // 2] * 1000:.0f} ms; per reply: routing {routing_ms:.0f} ms, first token "
              f"{ttft_ms:.0f} ms, prompt {prompt:.0f} tokens ({reused:.0f} reused); errors {len(errors)}")

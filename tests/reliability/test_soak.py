"""A long conversation: 200 messages in one session through ChatService in this process, on the
real stack the app builds (the demo base with its draft and modifiers in llama.cpp, the router
with its heads and MiniLM, sessions.db on a file). Nothing fails, every row is stored, the router
panel draws the whole chat, and resident memory stops growing after warm-up. Tokens/s per reply is
printed, not asserted: the conversation fills the context window early, and from then on every
message re-reads a full window."""

from __future__ import annotations

import gc
import os
import sqlite3
import subprocess

import pytest

from app.chat import ChatService, ChatSettings
from app.memory import Memory
from app.panel import TABLE_ROWS
from app.ui import panel_views
from models.engine import Engine
from models.manifest import get_profile
from router.decision import Thresholds
from router.perplexity import Perplexity
from router.router import Router

MESSAGES = 200
WARM_UP = 50
MAX_TOKENS = 16
N_CTX = 1024
MAX_GROWTH_KB = 32 * 1024  # generous: what grows by design (embedding cache, SQLite pages) is far less


def rss_kb() -> int:
    """Resident memory now (ps works on Linux and macOS alike), after a garbage collection."""
    gc.collect()
    return int(subprocess.run(["ps", "-o", "rss=", "-p", str(os.getpid())], capture_output=True, text=True,
                              check=True).stdout)


@pytest.mark.slow
def test_two_hundred_messages_in_one_session(demo_set, router_parts, tmp_path):
    profile = get_profile("demo")
    # Built as launch.py builds it (base, draft, the three modifiers), with half the profile's
    # window: the conversation fills it within ~15 messages, so most of the soak runs with a full
    # window (every message re-reads it) at half the cost of the app's 2048 tokens.
    engine = Engine(demo_set["base"], n_ctx=N_CTX, draft=demo_set["draft"],
                    modifiers={f.name: (demo_set[f.name], f.scale) for f in profile.modifiers})
    embedder, domain, escalation = router_parts
    settings = ChatSettings(max_tokens=MAX_TOKENS)  # the app's sampling: temperature 0.7, a new seed per reply
    router = Router(Perplexity(engine.score, max_tokens=settings.max_tokens), Thresholds.from_settings(profile.settings),
                    embedder, domain, escalation)
    service = ChatService(engine, Memory(tmp_path / "sessions.db"), settings, router=router)
    session = service.new_session()

    rss, replies = {}, []
    topics = ["Write a Python function that reverses a list.", "Why is the sky blue? Think step by step.",
              "Send an email to the team every Monday at nine.", "hello, how are you?"]
    for i in range(1, MESSAGES + 1):
        final = None
        for final in service.respond(session, f"message {i}: {topics[i % len(topics)]}"):
            pass
        assert final.status == "complete", (i, final.status, final.notice)
        assert final.session_id == session
        replies.append((final.stats, final.decision))
        if i in (WARM_UP, 100, 150, MESSAGES):
            rss[i] = rss_kb()

    db = sqlite3.connect(tmp_path / "sessions.db")
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    rows = db.execute("select role, status from messages where session_id = ? order by id", [session]).fetchall()
    assert rows == [("user", "complete"), ("assistant", "complete")] * MESSAGES
    assert db.execute("select count(*) from decisions where session_id = ?", [session]).fetchone()[0] == MESSAGES
    # the router panel of a 200-turn chat, as the UI draws it after each reply and on reopening
    path, timeline, _, table = panel_views(service, session)
    assert f"message {MESSAGES}:" in path and len(table) == TABLE_ROWS
    assert len(next(iter(timeline["value"].to_dict()["datasets"].values()))) == MESSAGES

    grown_kb = rss[MESSAGES] - rss[WARM_UP]
    assert grown_kb < MAX_GROWTH_KB, f"RSS grew {grown_kb} kB from message {WARM_UP} to {MESSAGES}: {rss}"

    def band(lo: int, hi: int) -> str:
        part, decisions = [s for s, _ in replies[lo:hi]], [d for _, d in replies[lo:hi]]
        timed = [s.tokens_per_s for s in part if s.tokens > 1]
        return (f"{lo + 1}-{hi}: {sum(timed) / max(len(timed), 1):.0f} tok/s, routing "
                f"{sum(d.routing_ms for d in decisions) / len(decisions):.0f} ms, "
                f"{sum(d.route == 'base' for d in decisions)} on base, first token "
                f"{sum(s.ttft_ms for s in part) / len(part):.0f} ms, prompt {sum(s.prompt_tokens for s in part) / len(part):.0f} "
                f"({sum(s.reused_tokens for s in part) / len(part):.0f} reused), dropped turns "
                f"{sum(s.dropped_turns for s in part) / len(part):.0f}")
    first_dropped = next((n + 1 for n, (s, _) in enumerate(replies) if s.dropped_turns), None)
    print(f"\nsoak: {MESSAGES} messages, max_tokens {MAX_TOKENS}, n_ctx {N_CTX}: RSS (kB) {rss}, grew {grown_kb} kB after warm-up; "
          f"context full from message {first_dropped}; " + "; ".join(band(lo, lo + 25) for lo in range(0, MESSAGES, 25)))

"""The router panel and the override through the app's API (gradio_client), checked against
sessions.db read directly."""

from __future__ import annotations

import sqlite3

from gradio_client import Client


def test_override_changes_the_route_and_the_panel_matches_sessions_db(app):
    url, db_path = app
    client = Client(url, verbose=False)
    session = client.predict(api_name="/new_session")
    message = "Write a Python function that merges two sorted lists."
    client.predict(message, session, "", api_name="/chat")               # auto
    client.predict(message, session, "automation", api_name="/chat")     # the same text, overruled
    client.predict("<img src=x onerror=alert(1)>", session, "base", api_name="/chat")
    assert client.predict(session, 1, False, api_name="/feedback") > 0   # 👎 on the first reply

    db = sqlite3.connect(db_path)
    stored = db.execute("select route, router_choice, overridden, reason, perplexity, escalation_p, routing_ms, "
                        "ttft_ms, tokens_per_s, draft_proposed, draft_accepted from decisions "
                        "where session_id = ? order by id", [session]).fetchall()
    assert [(r[0], r[2]) for r in stored] == [(stored[0][1], 0), ("automation", 1), ("base", 1)]
    # Overruled, the router still made (and stored) its own choice for this turn. Not necessarily
    # the first turn's: the repeated text now follows a sampled reply, which moves its perplexity.
    assert stored[1][1] in ("base", "code", "reasoning", "automation")
    assert stored[1][3].startswith(f"override: you chose automation (the router would pick {stored[1][1]}")

    panel = client.predict(session, api_name="/panel")
    keys = ("route", "router_choice", "overridden", "reason", "perplexity", "escalation_p", "routing_ms",
            "ttft_ms", "tokens_per_s", "draft_proposed", "draft_accepted")
    assert [tuple(int(d[k]) if k == "overridden" else d[k] for k in keys) for d in panel["decisions"]] == stored
    assert panel["decisions"][2]["message"] == "<img src=x onerror=alert(1)>"
    counts = dict(db.execute("select route, count(*) from decisions group by route").fetchall())
    assert panel["routes"]["all"] == counts and sum(panel["routes"]["session"].values()) == 3
    (liked,) = db.execute("select liked from feedback where session_id = ?", [session]).fetchall()
    assert liked == (0,) and [d["liked"] for d in panel["decisions"]] == [False, None, None]
    assert client.predict("", api_name="/panel")["decisions"] == []


def test_a_failing_sessions_db_is_explained_to_the_caller(app):
    """A 👍/👎 while another program holds sessions.db's write lock: the caller is told which file
    and why (Gradio turns any other exception into a bare "Error")."""
    import pytest
    from gradio_client.exceptions import AppError

    url, db_path = app
    client = Client(url, verbose=False)
    session = client.predict(api_name="/new_session")
    client.predict("hello", session, "", api_name="/chat")
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("begin exclusive")
        with pytest.raises(AppError) as err:
            client.predict(session, 1, False, api_name="/feedback")
    finally:
        holder.execute("rollback")
        holder.close()
    assert str(db_path) in str(err.value) and "locked" in str(err.value), str(err.value)
    assert client.predict(session, 1, False, api_name="/feedback") > 0  # and once it is free, it works

"""The router panel on real routed replies: its data is what sessions.db holds, its drawings show
those numbers, and whatever the user typed is shown as text."""

from __future__ import annotations

import json
import sqlite3
from types import SimpleNamespace

import pytest

from app import panel
from app.chat import ChatService
from models.engine import Engine

HOSTILE = "<img src=x onerror=alert(1)> fix my <script>alert('x')</script> regex"


@pytest.fixture
def chat(routed_service):
    """One session: a code question, a hostile message overridden to reasoning, a follow-up."""
    *_, one = routed_service.respond(None, "Write a Python function that reverses a linked list.")
    sid = one.session_id
    *_, two = routed_service.respond(sid, HOSTILE, override="reasoning")
    *_, three = routed_service.respond(sid, "no, that is wrong, it does not work at all")
    routed_service.give_feedback(sid, 3, False)  # 👎 on the second reply (messages 0..5)
    return routed_service, sid, [one, two, three]


def test_panel_data_is_what_sessions_db_holds(chat):
    service, sid, replies = chat
    data = service.panel(sid)
    db = sqlite3.connect(service.memory.path)
    stored = db.execute("select message_id, route, router_choice, overridden, reason, perplexity, ttft_ms "
                        "from decisions where session_id = ? order by id", [sid]).fetchall()
    assert [(d["message_id"], d["route"], d["router_choice"], int(d["overridden"]), d["reason"], d["perplexity"],
             d["ttft_ms"]) for d in data["decisions"]] == stored
    assert [d["message_id"] for d in data["decisions"]] == [r.message_id for r in replies]
    assert data["decisions"][1]["message"] == HOSTILE
    assert data["routes"]["session"] == dict(db.execute(
        "select route, count(*) from decisions where session_id = ? group by route", [sid]).fetchall())
    assert [d["liked"] for d in data["decisions"]] == [None, False, None]


def test_the_path_shows_the_numbers_and_escapes_the_message(chat):
    service, sid, _ = chat
    second = service.panel(sid)["decisions"][1]
    drawn = panel.path_html(second, second["message"])
    assert "<img" not in drawn and "<script>" not in drawn
    assert "&lt;img src=x onerror=alert(1)&gt;" in drawn
    assert f"router chose {second['router_choice']} · you chose reasoning" in drawn
    assert f"τe {second['tau_e']:.2f}" in drawn and f"{second['perplexity']:.1f}" in drawn
    for name in panel.DOMAIN_ORDER:
        assert f"{second['domain_probs'][name]:.2f}" in drawn


def test_the_path_says_what_you_chose_when_it_could_not_run_and_when_the_router_agreed(routed_service, demo_set):
    """It said "you chose base" for a pick whose modifier was not available (the reply fell back to base),
    and "router chose base · you chose base" for a pick the router would have made too."""
    engine = Engine(demo_set["base"], n_ctx=512, modifiers={"code": (demo_set["code"], 1.0)})
    service = ChatService(engine, routed_service.memory, routed_service.settings, router=routed_service.router,
                          unavailable={"automation": "automation.gguf: not a number."})
    *_, asked = service.respond(None, "Write a Python function that reverses a linked list.",
                                       override="automation")
    drawn = panel.path_html(asked.decision.to_dict(), "…")
    assert asked.stats.adapter is None and asked.decision.route == "base"
    assert f"router chose {asked.decision.router_choice} · you chose automation → base: not available" in drawn
    *_, same = service.respond(None, "Write a Python function that reverses a linked list.",
                                      override=asked.decision.router_choice)
    assert f"you chose {same.decision.route} · the router agreed" in panel.path_html(same.decision.to_dict(), "…")
    table = panel.decisions_frame([asked.decision.to_dict() | {"turn": 1}, same.decision.to_dict() | {"turn": 1}])
    assert list(table["route"]) == [f"{same.decision.route} (you chose it; the router agreed)",
                                    f"base (you chose automation: not available; router: {asked.decision.router_choice})"]


def test_the_path_of_an_unrouted_chat_says_so():
    """QA 18: a chat whose one message the app was killed before routing read "No message routed yet in this
    chat. Send one": one had been sent. Said so it holds for a new chat and for that one."""
    assert "No message in this chat has been routed yet: the next one's path through the router appears here." \
        in panel.path_html(None)


def test_the_timeline_is_hidden_until_there_is_a_turn_and_says_when_none_was_measured(routed_service):
    """QA 18: a new chat showed an empty plot box, and a chat whose every turn went unmeasured showed axes and
    the dashed τp alone, with nothing saying why."""
    from app.ui import panel_views

    _, timeline, _, _ = panel_views(routed_service, None)
    assert timeline["visible"] is False
    *_, reply = routed_service.respond(None, "hello")
    _, timeline, _, _ = panel_views(routed_service, reply.session_id)
    assert timeline["visible"] is True
    assert "not measured" not in json.dumps(timeline["value"].to_dict()["title"])
    unmeasured = [dict(d, perplexity=None) for d in routed_service.panel(reply.session_id)["decisions"]]
    title = panel.timeline_chart(unmeasured).to_dict()["title"]
    assert "no turn measured: it could not change their routes" in title["subtitle"]


def test_the_timeline_has_one_point_per_turn_and_rings_escalations(chat):
    service, sid, replies = chat
    decisions = service.panel(sid)["decisions"]
    spec = panel.timeline_chart(decisions).to_dict()
    points = [row for row in spec["datasets"][next(iter(spec["datasets"]))]]
    assert [p["route"] for p in points] == [d["route"] for d in decisions]
    measured = [round(d["perplexity"], 2) for d in decisions]
    assert [p["perplexity"] for p in points] == measured
    escalated = [d["escalation_p"] >= d["tau_e"] for d in decisions]
    assert [p["escalation"] for p in points] == escalated
    assert escalated[2] and replies[2].decision.rule == "escalation"  # "no, that is wrong…" was escalated
    unmeasured = [dict(d, perplexity=None) if i == 1 else d for i, d in enumerate(decisions)]  # as on a large base
    points = next(iter(panel.timeline_chart(unmeasured).to_dict()["datasets"].values()))
    assert [p["perplexity"] for p in points] == [measured[0], None, measured[2]]
    assert "perplexity gate</span>not measured" in panel.path_html(unmeasured[1])
    assert panel.timeline_chart([]) is None


def test_a_long_chat_draws_its_timeline_with_fewer_ticks(chat):
    """Past 20 turns the turn axis stops labelling every turn. That was written as values=None, which
    Altair rejects, so opening a chat of 21 turns or more showed "Error" in the chat and the panel."""
    service, sid, _ = chat
    decisions = [dict(d, turn=turn) for turn, d in enumerate(service.panel(sid)["decisions"] * 8, 1)]  # 24 turns
    spec = panel.timeline_chart(decisions).to_dict()
    assert len(next(iter(spec["datasets"].values()))) == 24
    axis = spec["layer"][0]["encoding"]["x"]["axis"]
    assert "values" not in axis and axis["format"] == "d"
    short = panel.timeline_chart(decisions[:20]).to_dict()["layer"][0]["encoding"]["x"]["axis"]
    assert short["values"] == list(range(1, 21))


def test_a_chat_of_22_real_replies_draws_every_panel_view(routed_service):
    """The whole panel, as the UI draws it after a reply or on reopening, for a chat longer than the
    timeline's labelled turns and the table's rows: the bug above only showed past 20 turns."""
    from app.ui import panel_views

    sid = routed_service.new_session()
    for i in range(22):
        *_, last = routed_service.respond(sid, f"question {i}: what is {i} squared?")
        assert last.status == "complete"
    path, timeline, distribution, table = panel_views(routed_service, sid)
    assert "question 21: what is 21 squared?" in path
    assert len(next(iter(timeline["value"].to_dict()["datasets"].values()))) == 22
    assert distribution["visible"] is True
    shares = distribution["value"]
    assert shares[shares["scope"] == "this chat"]["replies"].sum() == 22
    assert len(table) == panel.TABLE_ROWS and table["turn"].tolist()[0] == 22


def test_turns_are_numbered_as_the_chat_shows_them_when_a_message_failed(routed_service):
    """QA: a message whose reply failed (then: one too long) has no decision, and the turn after it was
    numbered 2 in the table and the timeline, where the chat shows it third."""
    from tests.app.test_chat import failed_turn

    *_, one = routed_service.respond(None, "Alpha: a first question")
    failed_turn(routed_service.memory, one.session_id)
    *_, three = routed_service.respond(one.session_id, "Gamma: a third question")
    decisions = routed_service.panel(one.session_id)["decisions"]
    assert [d["turn"] for d in decisions] == [1, 3]
    assert list(panel.decisions_frame(decisions)["turn"]) == [3, 1]
    spec = panel.timeline_chart(decisions).to_dict()
    rows = next(iter(spec["datasets"].values()))
    assert [p["turn"] for p in rows] == [1, 3]
    assert spec["layer"][0]["encoding"]["x"]["axis"]["values"] == [1, 2, 3]
    # QA 17: the dashed τp line had a gap over the failed turn (from 1.5 when it was the first): each
    # segment reaches back to the turn before it that has one
    assert [(p["from"], p["to"]) for p in rows] == [(0.5, 1.5), (1.5, 3.5)]
    first = [dict(decisions[1], turn=2)]  # the first message failed, the second is turn 2
    (row,) = next(iter(panel.timeline_chart(first).to_dict()["datasets"].values()))
    assert (row["from"], row["to"]) == (0.5, 2.5)


def test_distribution_and_table(chat):
    service, sid, replies = chat
    other = service.new_session()
    for _ in service.respond(other, "What's a good name for a cat?", override="base"):
        pass
    data = service.panel(sid)
    frame = panel.distribution_frame(data["routes"]["session"], data["routes"]["all"])
    mine = frame[frame["scope"] == "this chat"]
    assert mine["replies"].sum() == 3 and mine["share %"].sum() == pytest.approx(100, abs=0.2)
    assert frame[frame["scope"] == "all chats"]["replies"].sum() == 4
    table = panel.decisions_frame(data["decisions"])
    assert list(table["turn"]) == [3, 2, 1]  # newest first
    assert table.iloc[1]["route"] == f"reasoning (router: {replies[1].decision.router_choice})"
    assert table.iloc[1]["feedback"] == "👎 down" and table.iloc[0]["feedback"] == ""
    assert table.iloc[0]["model ms to first token"] == f"{replies[2].stats.ttft_ms:.1f}"


def test_the_line_under_the_chat_counts_routing_in_the_wait_for_the_first_token(chat):
    """On the base route the reply reuses routing's prefill: the engine's own wait read "first token 0 ms".
    Its two parts are named as the table's columns name them (QA 17: "first token 85 ms (routing 56)" beside
    the table's "first token ms after routing 29.8" read as two timings of one thing), and add up."""
    from app.display import stats_line

    _, _, replies = chat
    for reply in replies:
        routing, model = round(reply.decision.routing_ms), round(reply.stats.ttft_ms)
        shown = [str(part) if part else "<1" for part in (routing, model)]  # under 1 ms: see the test below
        assert f"first token {routing + model} ms (routing {shown[0]} + model {shown[1]})" in stats_line(reply)
        assert reply.decision.routing_ms > 0
    assert {"routing ms", "model ms to first token"} <= set(panel.TABLE_COLUMNS)



def test_a_model_wait_under_a_millisecond_does_not_read_as_none(chat):
    """QA 23: on the base route the reply reuses routing's prefill, so the engine's own wait can be 0.2 ms, and
    the line read "first token 20 ms (routing 20 + model 0)", as if the model had not run."""
    from app.display import stored_stats_line

    service, sid, _ = chat
    last = dict(service.panel(sid)["decisions"][-1], routing_ms=20.4, ttft_ms=0.2)
    assert "first token 20 ms (routing 20 + model <1)" in stored_stats_line(last)
    assert "(routing <1 + model 9)" in stored_stats_line(dict(last, routing_ms=0.3, ttft_ms=9.0))


def test_a_reply_stopped_before_its_first_token_has_no_first_token_time(chat):
    """QA 19: stopped before its first word, a reply read "first token 25 ms (routing 25 + model 0)", and the table
    "0.0": there was no first token to time."""
    from app.display import stored_stats_line

    service, sid, _ = chat
    last = dict(service.panel(sid)["decisions"][-1], tokens=0, ttft_ms=0.0, tokens_per_s=None, stop_reason="stopped")
    line = stored_stats_line(last)
    assert "0 tokens" in line and "first token" not in line and "stop: stopped" in line
    assert panel.decisions_frame([last]).iloc[0]["model ms to first token"] == "—"

def test_a_reply_of_one_token_has_no_speed(routed_service):
    """QA (--max-tokens 1): "1 tokens · 0.0 tok/s", and a speed of 0 stored: one token has no decode phase
    to time, so there is no speed to give."""
    from dataclasses import replace

    from app.display import stats_line

    service = routed_service
    service.settings = replace(service.settings, max_tokens=1)
    *_, reply = service.respond(None, "Write a Python function that reverses a list.")
    assert reply.stats.tokens == 1 and reply.stats.tokens_per_s is None
    line = stats_line(reply)
    assert " · 1 token · " in line and "tok/s" not in line
    (row,) = service.panel(reply.session_id)["decisions"]
    assert row["tokens_per_s"] is None and panel.decisions_frame([row]).iloc[0]["tok/s"] == "—"


def test_feedback_only_on_replies(chat):
    """QA 22 #4: the refusal said "there is no reply at position 0 of this chat", not where the replies are; with
    no chat given it said the chat "was deleted, or the id is wrong", and a bad index was reported first."""
    service, sid, _ = chat
    replies = "There is no reply at position {} of this chat: its replies are at positions 1, 3 and 5"
    with pytest.raises(ValueError, match=replies.format(0)):
        service.give_feedback(sid, 0, True)
    with pytest.raises(ValueError, match=replies.format(99)):
        service.give_feedback(sid, 99, True)
    for nothing in ("", None):
        with pytest.raises(ValueError, match="No chat given: pass the session id of the chat the reply is in"):
            service.give_feedback(nothing, "", True)


def test_the_timeline_draws_no_empty_layer_and_carries_its_own_title(chat):
    """A layer with no data (no escalation yet; no perplexity measured, as on a large base) made Vega
    warn "Infinite extent" in the browser console. The caption is the chart's own title: as the
    gr.Plot's label it covered the top of the chart."""
    service, sid, _ = chat
    decisions = service.panel(sid)["decisions"]
    calm = [dict(d, escalation_p=0.0) for d in decisions]
    unmeasured = [dict(d, perplexity=None) for d in calm]

    def layers(ds):
        spec = panel.timeline_chart(ds).to_dict()
        assert spec["title"]["text"] == "Perplexity per turn"
        return [(layer["mark"]["type"], layer["encoding"]["y"]["field"]) for layer in spec["layer"]]

    assert ("point", "perplexity") in layers(decisions)  # the escalation's ring
    assert layers(calm) == [("rule", "τp"), ("line", "perplexity"), ("circle", "perplexity")]
    assert layers(unmeasured) == [("rule", "τp")]


def test_a_pick_the_router_made_too_whose_modifier_is_not_available_reads_as_agreed(routed_service, demo_set):
    """It read "router chose automation · you chose automation → base: not available"."""
    engine = Engine(demo_set["base"], n_ctx=512, modifiers={"code": (demo_set["code"], 1.0)})
    service = ChatService(engine, routed_service.memory, routed_service.settings, router=routed_service.router,
                          unavailable={"automation": "automation.gguf: not a number."})
    *_, asked = service.respond(None, "Every Monday, email me the week's sales totals from the CRM.",
                                override="automation")
    d = asked.decision.to_dict() | {"router_choice": "automation", "turn": 1}  # as the router would pick it too
    assert "you chose automation · the router agreed → base: not available" in panel.path_html(d, "…")
    assert list(panel.decisions_frame([d])["route"]) == ["base (you and the router chose automation: not available)"]


def test_the_route_distribution_is_hidden_until_there_is_a_reply_to_count(routed_service):
    """Empty, Gradio's bar chart drew its two axis titles over each other."""
    from app.ui import panel_views

    _, _, distribution, _ = panel_views(routed_service, None)
    assert distribution["visible"] is False and distribution["value"].empty
    *_, reply = routed_service.respond(None, "hello")
    _, _, distribution, _ = panel_views(routed_service, None)  # no chat open: all chats still count
    assert distribution["visible"] is True and distribution["value"]["replies"].sum() == 1


def test_the_tau_p_line_is_drawn_from_the_first_turn(chat):
    """QA: with one turn the dashed τp line was missing (a line through one point draws nothing), while the
    axis had stretched to reach it. It is a dashed segment across each turn's width now."""
    service, sid, _ = chat
    first = service.panel(sid)["decisions"][:1]
    spec = panel.timeline_chart(first).to_dict()
    (tau_layer,) = [layer for layer in spec["layer"] if layer["encoding"]["y"]["field"] == "τp"]
    assert tau_layer["mark"]["type"] == "rule" and tau_layer["mark"]["strokeDash"] == [6, 4]
    assert {tau_layer["encoding"]["x"]["field"], tau_layer["encoding"]["x2"]["field"]} == {"from", "to"}
    (row,) = next(iter(spec["datasets"].values()))
    assert (row["from"], row["to"], row["τp"]) == (0.5, 1.5, round(first[0]["tau_p"], 2))


def test_the_line_of_a_reopened_reply_still_says_what_was_left_out_of_it(routed_service):
    """QA 17: past the context window the notice said "the oldest 22 messages were left out", but once
    the chat was reopened or reloaded nothing did, though sessions.db held it."""
    from app.display import stored_stats_line

    service, words = routed_service, "the model writes code and plans every day " * 60
    session, reply = None, None
    for i in range(12):
        *_, reply = service.respond(session, f"{i}: {words}")
        session = reply.session_id
        if reply.stats.dropped_turns:
            break
    n = reply.stats.dropped_turns
    assert n >= 2, n
    (*_, row) = service.panel(session)["decisions"]
    assert row["dropped_turns"] == n
    assert f"{n} earlier messages left out" in stored_stats_line(row)
    from app.display import stats_line

    assert f"{n} earlier messages left out" in stats_line(reply)


def test_a_reply_the_draft_proposed_nothing_for_still_says_drafting_was_on(routed_service_on, demo_set):
    """QA 21 #7: with Speculative decoding on, a reply in which the adaptive drafter chose plain decoding
    at every step read exactly as one with it off, so the toggle seemed to do nothing. Reopened, it reads the
    same (sessions.db keeps whether drafting was on)."""
    from app.display import stats_line, stored_stats_line
    from models.speculative import DraftLength

    engine = Engine(demo_set["base"], n_ctx=512, draft=demo_set["draft"])
    service = routed_service_on(engine)
    engine._draft_length = DraftLength(fixed=0)  # what the adaptive drafter does while plain decoding wins
    *_, on = service.respond(None, "hello there")
    *_, off = service.respond(on.session_id, "hello again", use_draft=False)
    assert on.stats.draft_proposed == 0 and off.stats.draft_proposed == 0
    assert " · draft on: none proposed" in stats_line(on)
    assert " · draft" not in stats_line(off)
    stored_on, stored_off = service.panel(on.session_id)["decisions"]
    assert " · draft on: none proposed" in stored_stats_line(stored_on)
    assert " · draft" not in stored_stats_line(stored_off)
    assert list(panel.decisions_frame([stored_on, stored_off])["draft accepted"]) == ["—", "0/0"]  # newest first


def test_the_timelines_tooltip_gives_the_escalation_as_its_probability(chat):
    """QA 22: hovering a point read "escalation false" / "escalation true", a raw boolean."""
    service, sid, _ = chat
    decisions = service.panel(sid)["decisions"]
    spec = panel.timeline_chart(decisions).to_dict()
    (points,) = [layer for layer in spec["layer"] if layer["mark"]["type"] == "circle"]
    fields = [t["field"] for t in points["encoding"]["tooltip"]]
    assert "escalation" not in fields and "P(unhappy)" in fields
    rows = next(iter(spec["datasets"].values()))
    for row, d in zip(rows, decisions):
        fired = d["escalation_p"] >= d["tau_e"]
        assert row["P(unhappy)"] == f"{d['escalation_p']:.2f} {'≥' if fired else '<'} τe {d['tau_e']:.2f}"


@pytest.mark.parametrize("signal_values, override", [
    (dict(perplexity=3.0, code=0.97, general=0.03), None),              # perplexity → base
    (dict(perplexity=50.0, code=0.97, general=0.03), None),             # domain → code
    (dict(perplexity=50.0, code=0.6, general=0.4), None),               # fallback → base
    (dict(perplexity=None, general=0.9, code=0.1), None),               # not measured → base
    (dict(escalation_p=0.9, code=0.9, general=0.1), None),              # escalation → code
    (dict(perplexity=3.0, code=0.97, general=0.03), "automation"),      # an override keeps the router's why
    (dict(perplexity=50.0, code=0.97, general=0.03), "missing"),        # code not installed → base
])
def test_the_line_under_the_chat_names_the_route_once(signal_values, override):
    """QA 22 #6: "**→ base** — perplexity 3.2 ≤ τp 12.4: familiar to the base model → base": the line leads with
    the route, then gave the router's reason, which ends by naming it again. The table keeps the whole reason."""
    from app.display import stats_line
    from router.decision import NOT_AVAILABLE, Signals, Thresholds
    from router.policy import decide

    perplexity, escalation_p = signal_values.pop("perplexity", 50.0), signal_values.pop("escalation_p", 0.1)
    probs = {"code": 0.0, "reasoning": 0.0, "automation": 0.0, "general": 0.0, **signal_values}
    d = decide(Signals(perplexity, escalation_p, probs), Thresholds(10.0, 0.5, 0.8, True),
               None if override == "missing" else override)
    if override == "missing":  # as ChatService records it
        d.reason, d.route = d.reason + "; " + NOT_AVAILABLE.format(d.route), "base"
    line = stats_line(SimpleNamespace(decision=d, stats=None))
    assert line.startswith(f"**→ {d.route}** — ") and line.count("→") == 1, line
    assert f"→ {d.router_choice}" in d.reason  # the stored reason is the router's whole line
    if d.overridden:
        assert f"the router would pick {d.router_choice}: " in line
    if override == "missing":
        assert line.endswith("; the code modifier is not available  \n"), line

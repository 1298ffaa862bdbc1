"""The router on the real stack: MiniLM embeddings, the committed heads, the demo base model's
perplexity; then ChatService storing every decision in sessions.db."""

from __future__ import annotations

import sqlite3

import pytest

from app.chat import ChatService, ChatSettings
import models.engine as engine_module
import models.scoring as scoring
from app.memory import Memory
from router.decision import Thresholds
from router.perplexity import Perplexity
from router.router import Router

SYSTEM = "You are a test."
ALWAYS_PAST_THE_GATE = Thresholds(tau_p=0.0, tau_e=0.5, tau_d=0.8, calibrated=True)


def make_router(engine, router_parts, thresholds=ALWAYS_PAST_THE_GATE) -> Router:
    embedder, domain, escalation = router_parts
    return Router(Perplexity(engine.score, max_tokens=48), thresholds, embedder, domain, escalation)


@pytest.mark.parametrize("message, route", [
    ("Write a Python function that removes duplicates from a list while keeping the order.", "code"),
    ("A train leaves at 3pm going 80 km/h; a second leaves at 4pm going 100 km/h. When does it catch up?",
     "reasoning"),
    ("Every Monday at 9am, email me last week's sales totals from the Shopify store.", "automation"),
])
def test_a_clear_message_goes_to_its_domain_modifier(engine, router_parts, message, route):
    d = make_router(engine, router_parts).decide(message, [], system_prompt=SYSTEM)
    assert (d.route, d.rule, d.overridden) == (route, "domain", False)
    assert d.domain_probs[route] >= 0.8 and d.perplexity > 0 and d.routing_ms > 0
    assert d.escalation_p == 0.0  # nothing answered yet, nothing to be unhappy about


def test_a_general_message_stays_on_base_without_scoring_perplexity(engine, router_parts, monkeypatch):
    """Base whatever its perplexity, so on a base whose logits are costly the router does not pay
    for them; the demo's cost less than asking, so it has the value."""
    message = "What's a good name for a golden retriever puppy?"
    cheap = make_router(engine, router_parts).decide(message, [], system_prompt=SYSTEM)
    assert (cheap.route, cheap.domain, cheap.rule) == ("base", "general", "fallback") and cheap.perplexity > 0
    scored = []
    nll = engine._nll
    monkeypatch.setattr(engine, "_nll", lambda *a: scored.append(1) or nll(*a))
    monkeypatch.setattr(engine_module, "ASK_ABOVE_MACS", 0)  # as Qwen's 151,936-token vocabulary
    d = make_router(engine, router_parts).decide(message, [], system_prompt=SYSTEM)
    assert (d.route, d.domain, d.rule, d.perplexity) == ("base", "general", "fallback", None)
    assert "perplexity not measured" in d.reason and scored == []


def test_the_perplexity_gate_sends_familiar_text_to_base(engine, router_parts):
    message = "Write a SQL query that counts orders per customer."
    perplexity = make_router(engine, router_parts).decide(message, [], system_prompt=SYSTEM).perplexity
    gate = Thresholds(tau_p=perplexity * 1.01, calibrated=True)
    d = make_router(engine, router_parts, gate).decide(message, [], system_prompt=SYSTEM)
    assert (d.route, d.rule, d.domain) == ("base", "perplexity", "code")


def test_a_follow_up_keeps_the_conversation_domain(engine, router_parts):
    router = make_router(engine, router_parts)
    history = [{"role": "user", "content": "How do I read a CSV file into a list of dicts in Python?"},
               {"role": "assistant", "content": "Use csv.DictReader: `list(csv.DictReader(open(path)))`."}]
    first = router.decide(history[0]["content"], [], system_prompt=SYSTEM)
    alone = router.decide("and in Rust?", [], system_prompt=SYSTEM)
    follow = router.decide("and in Rust?", history, [first.to_dict()], system_prompt=SYSTEM)
    assert follow.domain == "code" and follow.route == "code"
    assert follow.domain_probs["code"] > alone.domain_probs["code"]


def test_an_unhappy_user_is_escalated_to_the_conversation_domain(engine, router_parts):
    router = make_router(engine, router_parts, Thresholds(tau_p=1e9, calibrated=True))  # gate: all to base
    history = [{"role": "user", "content": "What is 15% of 240?"},
               {"role": "assistant", "content": "15% of 240 is 32."}]
    first = router.decide(history[0]["content"], [], system_prompt=SYSTEM)
    happy = router.decide("great, thanks! and 20% of 240?", history, [first.to_dict()], system_prompt=SYSTEM)
    unhappy = router.decide("That's wrong. 15% of 240 is 36, check your math.", history, [first.to_dict()],
                            system_prompt=SYSTEM)
    assert happy.route == "base" and happy.escalation_p < 0.5
    assert unhappy.escalation_p >= 0.5 and unhappy.rule == "escalation" and unhappy.route == "reasoning"


@pytest.mark.parametrize("complaint", ["No, that's not what I asked. Try again.", "This doesn't work at all, try again.",
                                       "still broken", "That didn't help, try again please."])
def test_a_complaint_after_code_is_escalated_to_code(engine, router_parts, complaint):
    """QA 13: content-free complaints after a code answer went to reasoning: the domain head read them
    as reasoning, general or automation, the previous turn's code prior notwithstanding."""
    router = make_router(engine, router_parts, Thresholds(tau_p=1e9, calibrated=True))
    history = [{"role": "user", "content": "How do I remove duplicates from a JavaScript array?"},
               {"role": "assistant", "content": "Use a Set: `const unique = [...new Set(items)];`."}]
    first = router.decide(history[0]["content"], [], system_prompt=SYSTEM)
    unhappy = router.decide(complaint, history, [first.to_dict()], system_prompt=SYSTEM)
    assert first.domain == "code" and unhappy.rule == "escalation" and unhappy.route == "code", unhappy.reason
    again = router.decide("wrong again", history + [{"role": "user", "content": complaint},
                                                    {"role": "assistant", "content": "Try `items.unique()`."}],
                          [first.to_dict(), unhappy.to_dict()], system_prompt=SYSTEM)
    assert again.rule == "escalation" and again.route == "code", again.reason


@pytest.mark.parametrize("question, statement, reply", [
    ("Sure, I can suggest a present. How old is your nephew?", "Most children start school at 9 years old.", "5"),
    ("Nice! Which year did you start at the company?", "Python 3 was first released in 2015.", "2008"),
])
def test_answering_the_assistants_own_question_is_not_an_escalation(engine, router_parts, question, statement,
                                                                     reply):
    """The same bare reply is an answer after a question and a correction after a statement."""
    router = make_router(engine, router_parts)
    asked, corrected = (router.decide(reply, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": a}],
                                      system_prompt=SYSTEM) for a in (question, statement))
    assert asked.escalation_p < ALWAYS_PAST_THE_GATE.tau_e and asked.rule != "escalation"
    assert corrected.escalation_p > asked.escalation_p


def test_routing_a_reply_to_an_answer_encodes_only_the_new_message(engine, router_parts, monkeypatch):
    """Both heads and every layer the escalation head reads come from one encode of the message;
    the answer's layers were made by remember() when it ended."""
    from router.embeddings import Embedder

    _, domain, escalation = router_parts
    embedder = Embedder()
    router = Router(Perplexity(engine.score, max_tokens=48), ALWAYS_PAST_THE_GATE, embedder, domain, escalation)
    answer = "Use csv.DictReader: `list(csv.DictReader(open(path)))`."
    router.remember(answer)
    router.settle()
    encoded = []
    original = embedder._encode
    monkeypatch.setattr(embedder, "_encode", lambda texts: encoded.extend(texts) or original(texts))
    history = [{"role": "user", "content": "How do I read a CSV in Python?"}, {"role": "assistant", "content": answer}]
    d = router.decide("that loads everything into memory, I said the file is 40 GB", history, system_prompt=SYSTEM)
    assert encoded == ["that loads everything into memory, I said the file is 40 GB"]
    assert 0.0 < d.escalation_p < 1.0


def test_every_reply_stores_its_decision_and_stats(routed_service):
    *_, last = routed_service.respond(None, "Write a bash one-liner that counts lines in all .py files.")
    assert last.status == "complete" and last.decision.route == "code" and last.stats.adapter == "code"
    db = sqlite3.connect(routed_service.memory.path)
    db.row_factory = sqlite3.Row
    (row,) = db.execute("select * from decisions where session_id = ?", [last.session_id]).fetchall()
    assert row["message_id"] == last.message_id and row["route"] == "code" and row["router_choice"] == "code"
    assert row["overridden"] == 0 and row["reason"] == last.decision.reason
    assert row["perplexity"] == pytest.approx(last.decision.perplexity) and row["tau_p"] == 0.0
    assert row["tokens"] == last.stats.tokens and row["ttft_ms"] == pytest.approx(last.stats.ttft_ms)
    assert row["routing_ms"] > 0 and '"code"' in row["domain_probs"]


def test_an_override_is_followed_and_the_router_choice_recorded(routed_service):
    *_, last = routed_service.respond(None, "Write a bash one-liner that counts lines in all .py files.",
                                      override="automation")
    assert last.stats.adapter == "automation"
    (row,) = routed_service.memory.decisions(last.session_id)
    assert (row["route"], row["router_choice"], row["overridden"]) == ("automation", "code", True)
    assert row["reason"].startswith("override: you chose automation (the router would pick code")


def test_auto_leaves_the_choice_to_the_router(routed_service):
    *_, last = routed_service.respond(None, "Solve for x: 3x + 7 = 22.", override="Auto")
    assert not last.decision.overridden and last.decision.route == "reasoning" == last.stats.adapter


def test_a_base_route_reply_reuses_the_routing_prefill(engine, router_parts, tmp_path, monkeypatch):
    settings = ChatSettings(temperature=0, max_tokens=48, seed=0, system_prompt=SYSTEM)
    router = make_router(engine, router_parts, Thresholds(tau_p=1e9, calibrated=True))
    service = ChatService(engine, Memory(tmp_path / "s.db"), settings, router=router)
    replying, batches = [], []  # the batches decoded once the reply began
    decode, generate = engine._decode, engine.generate
    monkeypatch.setattr(engine, "_decode", lambda tokens, *a, **k: (replying and batches.append(len(tokens)))
                        or decode(tokens, *a, **k))
    monkeypatch.setattr(engine, "generate", lambda *a, **k: replying.append(True) or generate(*a, **k))
    *_, gated = service.respond(None, "Write a SQL query that counts orders per customer.")
    assert gated.decision.route == "base" and gated.decision.rule == "perplexity"
    assert set(batches) == {1}  # the scoring prefill was the reply's: it decoded its own tokens only
    assert gated.stats.reused_tokens < gated.stats.prompt_tokens  # the KV cache held only what came before
    monkeypatch.setattr(engine, "_decode", decode)
    monkeypatch.setattr(engine, "generate", generate)
    message = "tell me something about mushrooms that grow in forests"
    monkeypatch.setattr(engine_module, "ASK_ABOVE_MACS", 0)  # as a large vocabulary: asked, and not needed
    *_, general = service.respond(None, message)
    assert general.decision.route == "base" and general.decision.perplexity is None
    # routing decoded nothing: the reply reuses all the first reply left in the cache that it shares
    # (the system prompt and the user turn's opening) and prefills the rest itself
    before = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Write a SQL query that counts orders per customer."}]
    now = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": message}]
    first, second = engine.fit(before, 48)[0], engine.fit(now, 48)[0]
    assert general.stats.reused_tokens == scoring.common_prefix(first, second)
    row = service.memory.decisions(general.session_id)[0]
    assert row["perplexity"] is None and row["rule"] == "fallback"


def test_the_router_reads_the_session_last_turns(routed_service):
    *_, one = routed_service.respond(None, "How do I reverse a string in Python?")
    *_, two = routed_service.respond(one.session_id, "and in Go?")
    assert two.decision.domain == "code" and two.decision.route == "code", two.decision.reason


def test_a_message_too_long_to_route_is_refused_clearly_and_the_chat_goes_on(routed_service):
    *_, first = routed_service.respond(None, "hello there")
    *_, refused = routed_service.respond(first.session_id, "word " * 5000)
    assert refused.status == "ignored" and "too long for the model" in refused.notice  # not routed, not stored
    assert len(routed_service.memory.messages(first.session_id)) == 2
    *_, next_one = routed_service.respond(first.session_id, "Write a regex for ISO dates.")
    assert next_one.status == "complete" and next_one.decision.route == "code"


def test_the_escalation_count_is_the_whole_sessions(routed_service):
    """QA 27 #4: "escalation #N in this session" counted the last 5 decisions only: a session's ninth read "#2"."""
    *_, first = routed_service.respond(None, "Write a Python function that reverses a list.")
    sid = first.session_id
    reasons = []
    for n in range(7):
        *_, update = routed_service.respond(sid, "No, that is wrong, it does not work at all. Try again.")
        assert update.decision.rule == "escalation", update.decision.reason
        reasons.append(update.decision.reason)
    assert "escalation #7 in this session" in reasons[-1], reasons[-1]
    assert update.decision.session_escalations == 6  # before this one, as stored

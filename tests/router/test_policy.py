"""The policy on constructed signal values: the order override ▸ escalation ▸ perplexity ▸ domain,
the reasons it gives, and that an override keeps the router's own choice."""

from __future__ import annotations

import pytest

from router.decision import FALLBACK_TAU_P, Signals, Thresholds
from router.policy import decide, needs_perplexity

T = Thresholds(tau_p=10.0, tau_e=0.5, tau_d=0.8, calibrated=True)


def signals(perplexity=50.0, escalation_p=0.1, most_used=None, escalations=0, last_sure=None, **probs) -> Signals:
    domain = {"code": 0.0, "reasoning": 0.0, "automation": 0.0, "general": 0.0, **probs}
    return Signals(perplexity, escalation_p, domain, escalations, most_used, last_sure)


def test_low_perplexity_goes_to_base_even_when_the_domain_is_sure():
    d = decide(signals(perplexity=9.9, code=0.97, general=0.03), T)
    assert (d.route, d.rule, d.overridden) == ("base", "perplexity", False)
    assert "perplexity 9.9 ≤ τp 10.0" in d.reason
    # and says what it overrode (QA 21: a message scored surely code went to base, and nothing said why not code)
    assert d.reason.endswith("→ base, though domain code P=0.97 ≥ τd 0.80")
    assert decide(signals(perplexity=9.9, code=0.6, general=0.4), T).reason.endswith("model → base")


def test_perplexity_equal_to_the_threshold_counts_as_familiar():
    assert decide(signals(perplexity=10.0, code=0.97, general=0.03), T).route == "base"


def test_high_perplexity_and_a_sure_domain_pick_its_modifier():
    d = decide(signals(code=0.05, automation=0.9, general=0.05), T)
    assert (d.route, d.rule) == ("automation", "domain")
    assert "automation P=0.90 ≥ τd 0.80" in d.reason


def test_unsure_domain_falls_back_to_base():
    d = decide(signals(code=0.7, general=0.3), T)
    assert (d.route, d.rule) == ("base", "fallback")
    assert "code P=0.70 < τd 0.80" in d.reason


def test_general_domain_stays_on_base_however_sure():
    d = decide(signals(general=0.99, code=0.01), T)
    assert (d.route, d.rule) == ("base", "fallback") and "domain general" in d.reason


def test_escalation_beats_perplexity_and_uses_the_conversation_domain():
    d = decide(signals(perplexity=2.0, escalation_p=0.93, reasoning=0.6, general=0.4), T)
    assert (d.route, d.rule) == ("reasoning", "escalation")
    assert "escalation P=0.93 ≥ τe 0.50" in d.reason and "about reasoning" in d.reason


@pytest.mark.parametrize("most_used, expected", [("automation", "automation"), (None, "reasoning")])
def test_escalation_in_a_general_conversation_never_goes_to_base(most_used, expected):
    d = decide(signals(escalation_p=0.8, most_used=most_used, general=0.9, code=0.1), T)
    assert d.route == expected and d.route != "base"


def test_repeated_escalation_is_counted_in_the_reason():
    d = decide(signals(escalation_p=0.8, escalations=2, code=0.9, general=0.1), T)
    assert "escalation #3 in this session" in d.reason


def test_an_escalation_that_names_no_domain_surely_keeps_the_conversations_last_sure_one():
    """QA 13: "No, that's not what I asked. Try again." after a JavaScript answer read as reasoning (P=0.53),
    and went there; "This doesn't work at all" after a bash one-liner as general, and went to the session's
    most used modifier, reasoning. A complaint names no domain: the conversation's is the one it was last
    sure of."""
    d = decide(signals(escalation_p=0.9, last_sure="code", reasoning=0.53, general=0.37, code=0.1), T)
    assert (d.route, d.rule) == ("code", "escalation")
    assert "the conversation was last about code" in d.reason and "reasoning P=0.53 < τd 0.80" in d.reason
    d = decide(signals(escalation_p=0.9, last_sure="code", most_used="reasoning", general=0.66, code=0.27), T)
    assert d.route == "code" and "the conversation was last about code" in d.reason
    # a complaint that does name a domain surely goes there
    d = decide(signals(escalation_p=0.9, last_sure="code", automation=0.9, general=0.1), T)
    assert d.route == "automation" and "the conversation is about automation" in d.reason


@pytest.mark.parametrize("escalation_p, probs, needed", [
    (0.1, {"code": 0.9, "general": 0.1}, True),         # high perplexity → code, low → base: it decides
    (0.1, {"code": 0.7, "general": 0.3}, False),        # base either way: domain unsure
    (0.1, {"general": 0.99, "code": 0.01}, False),      # base either way: general
    (0.8, {"code": 0.9, "general": 0.1}, False),        # escalation: a modifier either way
])
def test_perplexity_is_needed_only_where_it_can_change_the_route(escalation_p, probs, needed):
    assert needs_perplexity(escalation_p, signals(**probs).domain_probs, T) is needed
    routes = {decide(signals(perplexity=p, escalation_p=escalation_p, **probs), T).route for p in (1.0, 1e6)}
    assert (len(routes) == 2) is needed


def test_an_unmeasured_perplexity_is_said_in_the_reason():
    d = decide(signals(perplexity=None, general=0.99, code=0.01), T)
    assert (d.route, d.rule, d.perplexity) == ("base", "fallback", None)
    assert "domain general P=0.99 → base" in d.reason and "perplexity not measured" in d.reason
    d = decide(signals(perplexity=None, code=0.7, general=0.3), T, override="code")
    assert (d.route, d.router_choice) == ("code", "base") and "perplexity not measured" in d.reason
    with pytest.raises(ValueError, match="needs the perplexity"):
        decide(signals(perplexity=None, code=0.9, general=0.1), T)


def test_override_wins_and_the_router_choice_is_kept():
    d = decide(signals(perplexity=3.0, code=0.9, general=0.1), T, override="automation")
    assert (d.route, d.router_choice, d.overridden, d.rule) == ("automation", "base", True, "override")
    assert d.reason.startswith("override: you chose automation (the router would pick base: perplexity 3.0")


def test_override_to_the_same_route_is_still_recorded_as_by_hand():
    d = decide(signals(perplexity=3.0, general=1.0), T, override="base")
    assert d.route == d.router_choice == "base" and d.overridden


def test_unknown_override_is_refused():
    with pytest.raises(ValueError, match="unknown route 'python'"):
        decide(signals(general=1.0), T, override="python")


def test_decision_carries_every_number_and_threshold():
    d = decide(signals(perplexity=12.5, escalation_p=0.2, code=0.85, general=0.15), T).to_dict()
    assert d["perplexity"] == 12.5 and d["tau_p"] == 10.0 and d["escalation_p"] == 0.2
    assert d["tau_e"] == 0.5 and d["tau_d"] == 0.8 and d["domain"] == "code"
    assert d["domain_probs"]["code"] == 0.85 and d["tau_p_calibrated"] is True


def test_thresholds_come_from_the_profile_with_a_fallback():
    assert Thresholds.from_settings({}) == Thresholds(FALLBACK_TAU_P, 0.55, 0.8, calibrated=False)
    t = Thresholds.from_settings({"router": {"tau_p": 7.5, "tau_e": 0.6}})
    assert (t.tau_p, t.tau_e, t.tau_d, t.calibrated) == (7.5, 0.6, 0.8, True)


def test_an_escalation_in_a_general_reading_goes_to_the_domain_the_message_before_leaned_to():
    """QA 27 #5: "nope" after "prove sqrt 2 is irrational" (reasoning P=0.55, under τd, so base) went to code, the
    session's most used modifier: the complaint is about that proof, which leaned to reasoning."""
    leaned = Signals(50.0, 0.9, {"code": 0.05, "reasoning": 0.05, "automation": 0.0, "general": 0.9},
                     most_used_modifier="code", last_domain="reasoning")
    d = decide(leaned, T)
    assert (d.route, d.rule) == ("reasoning", "escalation")
    assert "the message before leaned to reasoning" in d.reason
    leaned.last_sure_domain = "automation"  # a domain it was sure of still comes first
    assert decide(leaned, T).route == "automation"

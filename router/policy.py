"""The routing policy: plain code over the signal values and thresholds, in a fixed order
override ▸ escalation ▸ perplexity gate ▸ domain. It returns a Decision with a one-line reason.

Perplexity is the one costly signal (llama.cpp's output layer on every message token), and it can
change the route only where a modifier domain is sure and the user is not escalating: elsewhere the
route is the same whatever its value, so the router does not wait for it (needs_perplexity)."""

from __future__ import annotations

from router.decision import ROUTES, Decision, Signals, Thresholds


def leaning_domain(domain_probs: dict[str, float]) -> str | None:
    """The most likely domain where it is a modifier's, however likely; else None."""
    domain = max(domain_probs, key=domain_probs.get)
    return domain if domain != "general" else None


def sure_domain(domain_probs: dict[str, float], tau_d: float) -> str | None:
    """The most likely domain where it is a modifier's and at or above τd; else None."""
    domain = leaning_domain(domain_probs)
    return domain if domain and domain_probs[domain] >= tau_d else None


def needs_perplexity(escalation_p: float, domain_probs: dict[str, float], thresholds: Thresholds) -> bool:
    """Whether the perplexity gate can change the route: no escalation, and a modifier domain at or
    above τd (then low perplexity → base, high → that modifier). Else the route is fixed already."""
    return escalation_p < thresholds.tau_e and sure_domain(domain_probs, thresholds.tau_d) is not None


def decide(signals: Signals, thresholds: Thresholds, override: str | None = None) -> Decision:
    if override is not None and override not in ROUTES:
        raise ValueError(f"unknown route {override!r}: choose one of {', '.join(ROUTES)}")
    choice, rule, reason = _router_choice(signals, thresholds)
    decision = Decision(
        route=choice, router_choice=choice, overridden=False, reason=reason, rule=rule,
        perplexity=signals.perplexity, tau_p=thresholds.tau_p, escalation_p=signals.escalation_p,
        tau_e=thresholds.tau_e, domain=signals.domain, domain_probs=dict(signals.domain_probs),
        tau_d=thresholds.tau_d, tau_p_calibrated=thresholds.calibrated,
        session_escalations=signals.session_escalations,
    )
    if override is not None:
        decision.route, decision.overridden, decision.rule = override, True, "override"
        decision.reason = f"override: you chose {override} (the router would pick {choice}: {reason})"
    return decision


def _router_choice(s: Signals, t: Thresholds) -> tuple[str, str, str]:
    """(route, rule, reason) from the signals alone."""
    domain, p_domain = s.domain, s.domain_probs[s.domain]
    sure = sure_domain(s.domain_probs, t.tau_d)
    sure_words = f"domain {domain} P={p_domain:.2f} ≥ τd {t.tau_d:.2f}"  # why a modifier, when that is the case
    unsure = f"domain general P={p_domain:.2f}" if domain == "general" else \
        f"domain {domain} P={p_domain:.2f} < τd {t.tau_d:.2f}"  # why no modifier, when that is the case
    if s.escalation_p >= t.tau_e:
        # Unhappy with the last answer: never the plain base again. A complaint ("no, try again") seldom
        # names a domain: then the conversation's is the one it was last sure of.
        if sure is None and s.last_sure_domain:
            route, why = s.last_sure_domain, f"{unsure}; the conversation was last about {s.last_sure_domain}"
        elif domain != "general":
            route, why = domain, f"the conversation is about {domain}"
        elif s.last_domain:  # QA 27: "nope" after a proof read as reasoning P=0.55 went to the most used, code
            route, why = s.last_domain, f"general conversation; the message before leaned to {s.last_domain}"
        elif s.most_used_modifier:
            route, why = s.most_used_modifier, f"general conversation; {s.most_used_modifier} is this session's most used modifier"
        else:
            route, why = "reasoning", "general conversation and no modifier used yet"
        repeat = f", escalation #{s.session_escalations + 1} in this session" if s.session_escalations else ""
        return route, "escalation", (f"escalation P={s.escalation_p:.2f} ≥ τe {t.tau_e:.2f}: the user is unhappy "
                                     f"with the last answer → {route} ({why}{repeat})")
    if s.perplexity is None:
        if needs_perplexity(s.escalation_p, s.domain_probs, t):
            raise ValueError(f"the route needs the perplexity: {sure_words}")
        return "base", "fallback", f"{unsure} → base, whatever the perplexity (perplexity not measured)"
    if s.perplexity <= t.tau_p:
        overrode = f", though {sure_words}" if sure else ""  # the modifier it would have had
        return "base", "perplexity", (f"perplexity {s.perplexity:.1f} ≤ τp {t.tau_p:.1f}: familiar to the base "
                                      f"model → base{overrode}")
    if sure:
        return sure, "domain", f"perplexity {s.perplexity:.1f} > τp {t.tau_p:.1f}; {sure_words} → {sure}"
    return "base", "fallback", f"perplexity {s.perplexity:.1f} > τp {t.tau_p:.1f}; {unsure} → base"

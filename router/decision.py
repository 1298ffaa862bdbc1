"""The records that come out of the router: the signal values, the thresholds, and the Decision
that the panel draws and memory stores (nothing recomputes it later)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

ROUTES = ("base", "code", "reasoning", "automation")   # the plain base, then the LoRA modifiers
DOMAINS = ("code", "reasoning", "automation", "general")
FALLBACK_TAU_P = 12.4  # only where no calibration exists for the model set (router.calibrate)
# Added to a Decision's reason where its route's modifier is not loaded and the plain base ran instead
# (ChatService.respond); route_asked reads the route asked for back out of it.
NOT_AVAILABLE = "the {} modifier is not available → base"
_NOT_AVAILABLE = re.compile(re.escape(NOT_AVAILABLE).replace(re.escape("{}"), r"(\w+)"))


@dataclass
class Thresholds:
    tau_p: float = FALLBACK_TAU_P  # perplexity at or below this: the plain base handles it
    tau_e: float = 0.55            # escalation probability at or above this: the user is unhappy (the
                                   # middle of the best-F1 plateau, 0.52-0.58, on two strangers' sets:
                                   # router/EVALUATION.md)
    tau_d: float = 0.8             # domain probability needed to pick that domain's modifier
    calibrated: bool = False       # tau_p measured on this base model, not the fallback

    @classmethod
    def from_settings(cls, settings: dict) -> "Thresholds":
        """From a profile's settings["router"] (models/manifest.json)."""
        router = settings.get("router", {})
        known = {k: router[k] for k in ("tau_p", "tau_e", "tau_d") if router.get(k) is not None}
        return cls(**known, calibrated="tau_p" in known)


@dataclass
class Signals:
    perplexity: float | None              # base model's perplexity on the message in context; None:
                                          # not measured, as it could not change the route
    escalation_p: float                   # P(user unhappy with the previous answer)
    domain_probs: dict[str, float]        # P over DOMAINS, with the session's recent domain as context
    session_escalations: int = 0          # the session's escalations before this message
    most_used_modifier: str | None = None  # the modifier routed to most in the session's recent turns
    last_sure_domain: str | None = None   # the latest recent turn's domain, where it was a modifier's at or
                                          # above τd: what an escalation that names none is about
    last_domain: str | None = None        # the turn before's most likely domain where a modifier's, sure or
                                          # not: else what such an escalation is about

    @property
    def domain(self) -> str:
        return max(self.domain_probs, key=self.domain_probs.get)


@dataclass
class Decision:
    route: str                 # what the reply runs on: base, code, reasoning, automation
    router_choice: str         # what the router picked by itself (kept when overridden)
    overridden: bool           # the user picked the route by hand
    reason: str                # one line: which rule fired and on what numbers
    rule: str                  # override | escalation | perplexity | domain | fallback
    perplexity: float | None   # None: not measured, as it could not change the route (policy.needs_perplexity)
    tau_p: float
    escalation_p: float
    tau_e: float
    domain: str
    domain_probs: dict[str, float] = field(default_factory=dict)
    tau_d: float = 0.8
    tau_p_calibrated: bool = False
    session_escalations: int = 0
    routing_ms: float = 0.0    # all signals and the policy, as the user waited for them

    def to_dict(self) -> dict:
        return asdict(self)


def route_asked(route: str, reason: str) -> tuple[str, bool]:
    """The route asked for (by the person or by the router) of a stored decision, and whether the plain
    base ran instead because that modifier was not available: the panel draws it, and an override's
    export labels the message with it."""
    missing = _NOT_AVAILABLE.search(reason)
    return (missing[1], True) if missing else (route, False)

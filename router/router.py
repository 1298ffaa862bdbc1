"""The Router: runs the signals on one message and hands their values to the policy.

The message is embedded once and both heads read that embedding, on a worker thread. Perplexity is
scored only if the policy needs it (policy.needs_perplexity: a sure modifier domain, no escalation),
since its logits over every message token are routing's one large cost: the engine waits for the
signals before it decodes anything. (Where the logits are cheap, as on the demo base, it scores the
whole prompt while the signals run, without asking.) When it is not needed the base reply prefills
the message at plain cost."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence


from router.decision import Decision, Signals, Thresholds
from router.domain import DomainClassifier
from router.embeddings import Embedder
from router.escalation import EscalationDetector
from router.perplexity import Perplexity
from router.policy import decide, leaning_domain, needs_perplexity, sure_domain


class Router:
    def __init__(self, perplexity: Perplexity, thresholds: Thresholds | None = None,
                 embedder: Embedder | None = None, domain: DomainClassifier | None = None,
                 escalation: EscalationDetector | None = None):
        self.perplexity = perplexity
        self.thresholds = thresholds or Thresholds()
        self.embedder = embedder or Embedder()
        self.domain = domain or DomainClassifier()
        self.escalation = escalation or EscalationDetector()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router-signals")

    def decide(self, message: str, history: Sequence[dict], recent: Sequence[dict] = (),
               override: str | None = None, system_prompt: str | None = None,
               session_escalations: int | None = None) -> Decision:
        """history: the conversation so far ({role, content}); recent: the session's last decisions
        (Decision dicts, oldest first), which give the domain prior; session_escalations: the session's
        escalations so far (sessions.db counts them all), else those among `recent`."""
        started = time.perf_counter()
        previous_answer = next((m["content"] for m in reversed(history) if m["role"] == "assistant"), None)
        previous_probs = recent[-1]["domain_probs"] if recent else None
        signals = self._worker.submit(self.signals, message, previous_answer, previous_probs)

        def needed() -> bool:
            return needs_perplexity(*signals.result(), self.thresholds)

        perplexity = self.perplexity.score(message, history, system_prompt, needed)
        escalation_p, domain_probs = signals.result()
        routed = [d["route"] for d in recent if d["route"] != "base"]
        decision = decide(Signals(
            perplexity=perplexity, escalation_p=escalation_p, domain_probs=domain_probs,
            session_escalations=session_escalations if session_escalations is not None else
            sum(d["escalation_p"] >= d["tau_e"] for d in recent),
            most_used_modifier=Counter(routed).most_common(1)[0][0] if routed else None,
            last_sure_domain=next(filter(None, (sure_domain(d["domain_probs"], d["tau_d"]) for d in reversed(recent))),
                                  None),
            last_domain=leaning_domain(recent[-1]["domain_probs"]) if recent else None,
        ), self.thresholds, override)
        decision.routing_ms = (time.perf_counter() - started) * 1000
        return decision

    def signals(self, message: str, previous_answer: str | None,
                previous_probs: dict[str, float] | None) -> tuple[float, dict[str, float]]:
        """(escalation P, domain probabilities): one encode of the message, read by both heads. With no
        previous answer there is nothing to be unhappy about, and the escalation P is 0."""
        layers = self.embedder.layers([message])[0]  # the sentence embedding is the last
        domain_probs = self.domain.score(message, layers[-1], previous_probs)
        if not previous_answer:
            return 0.0, domain_probs
        answer = self.embedder.layers([previous_answer])[0]  # cached by remember() when the reply ended
        return self.escalation.score(message, layers, answer, previous_answer), domain_probs

    def remember(self, answer: str) -> None:
        """Embed a finished reply in the background (on the signals thread, which owns the
        embedder's cache), so the next message's routing finds it ready."""
        if answer:
            self._worker.submit(self.embedder.layers, [answer])

    def settle(self) -> None:
        """Wait until background work (remember) is done: a person takes longer than that to type."""
        self._worker.submit(lambda: None).result()

"""Perplexity signal: how surprised the plain base model is by the user's message, in its
conversation. Low perplexity means familiar ground, where the base alone does well."""

from __future__ import annotations

import math
from typing import Callable, Sequence

# (messages, max_tokens, needed) -> (mean negative log-likelihood of the last message's tokens, count),
# or None when needed() said the value is not wanted. launch.py hands in Engine.score; the router
# itself imports no model code.
ScoreFn = Callable[..., tuple[float, int] | None]


class Perplexity:
    def __init__(self, score_fn: ScoreFn, max_tokens: int = 256):
        self.score_fn = score_fn
        self.max_tokens = max_tokens  # the reply's room: the same prompt fit as the reply's, so its prefill is reused

    def score(self, message: str, history: Sequence[dict], system_prompt: str | None = None,
              needed: Callable[[], bool] | None = None) -> float | None:
        """exp(mean NLL) of the message's tokens given the system prompt and history; None when
        needed(), asked before anything is decoded where the logits are costly, says no."""
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
            [{"role": m["role"], "content": m["content"]} for m in history] + [{"role": "user", "content": message}]
        scored = self.score_fn(messages, max_tokens=self.max_tokens, needed=needed)
        if scored is None:
            return None
        nll, _ = scored
        return math.exp(min(nll, 700.0))  # exp overflows past ~709

"""Domain classifier: P over code, reasoning, automation, general for a message, read in the
context of the session's previous turn (a follow-up such as "and in Rust?" keeps the domain)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from router.decision import DOMAINS
from router.embeddings import DIM
from router.heads import WEIGHTS_DIR, Head, domain_dense


class DomainClassifier:
    def __init__(self, path: Path = WEIGHTS_DIR / "domain.pt", head: Head | None = None):
        """The head saved at `path`, or `head` as router.train has just fitted it (nothing read)."""
        self.head, self.meta = (head, {}) if head is not None else \
            Head.load(path, domain_dense([""], np.zeros((1, DIM))).shape[1])

    def score(self, text: str, embedding: np.ndarray, previous_probs: dict[str, float] | None = None) -> dict[str, float]:
        """text and its (DIM,) embedding; previous_probs: the previous turn's domain probabilities."""
        prior = None if previous_probs is None else np.array([[previous_probs.get(d, 0.0) for d in DOMAINS]])
        probs = self.score_many([text], embedding[None, :], prior)[0]
        return {d: float(p) for d, p in zip(DOMAINS, probs)}

    def score_many(self, texts: list[str], embeddings: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
        """(n, 4) probabilities; previous: optional (n, 4) priors, NaN rows where there is none."""
        return self.head.probabilities(texts, domain_dense(texts, embeddings, previous))

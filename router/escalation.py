"""Escalation detector: P(the user is unhappy with the previous answer | this message, that answer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from router.heads import WEIGHTS_DIR, Head, escalation_features


class EscalationDetector:
    def __init__(self, path: Path = WEIGHTS_DIR / "escalation.pt"):
        self.head, self.meta = Head.load(path)

    def score(self, embedding: np.ndarray, previous_answer: np.ndarray | None = None) -> float:
        """embedding: the message's (DIM,); previous_answer: the last assistant reply's, if any."""
        previous = None if previous_answer is None else previous_answer[None, :]
        return float(self.score_many(embedding[None, :], previous)[0])

    def score_many(self, embeddings: np.ndarray, previous_answers: np.ndarray | None = None) -> np.ndarray:
        return self.head.probabilities(escalation_features(embeddings, previous_answers))

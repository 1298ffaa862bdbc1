"""Escalation detector: P(the user is unhappy with the previous answer | this message, that answer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from router.heads import WEIGHTS_DIR, Head, escalation_dense


class EscalationDetector:
    def __init__(self, path: Path = WEIGHTS_DIR / "escalation.pt"):
        self.head, self.meta = Head.load(path)

    def score(self, text: str, embedding: np.ndarray, previous_answer: np.ndarray | None = None) -> float:
        """text and its (DIM,) embedding; previous_answer: the last reply's embedding, if any."""
        previous = None if previous_answer is None else previous_answer[None, :]
        return float(self.score_many([text], embedding[None, :], previous)[0])

    def score_many(self, texts: list[str], embeddings: np.ndarray, previous_answers: np.ndarray | None = None) -> np.ndarray:
        return self.head.probabilities(texts, escalation_dense(embeddings, previous_answers))

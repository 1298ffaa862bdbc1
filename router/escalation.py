"""Escalation detector: P(the user is unhappy with the previous answer | this message, that answer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from router.heads import WEIGHTS_DIR, Head, answers_asked, escalation_dense, escalation_width


class EscalationDetector:
    def __init__(self, path: Path = WEIGHTS_DIR / "escalation.pt", head: Head | None = None):
        """The head saved at `path`, or `head` as router.train has just fitted it (nothing read)."""
        self.head, self.meta = (head, {}) if head is not None else Head.load(path, escalation_width())

    def score(self, text: str, layers: np.ndarray, previous_answer: np.ndarray | None = None,
              previous_text: str | None = None) -> float:
        """text and its (MIDDLE_LAYERS + 1, DIM) Embedder.layers; previous_answer: the last reply's
        layers and previous_text its text, if any."""
        previous = None if previous_answer is None else previous_answer[None]
        return float(self.score_many([text], layers[None], previous, [previous_text])[0])

    def score_many(self, texts: list[str], layers: np.ndarray, previous_answers: np.ndarray | None = None,
                   previous_texts: list[str | None] | None = None) -> np.ndarray:
        asked = None if previous_texts is None else answers_asked(previous_texts)
        return self.head.probabilities(texts, escalation_dense(layers, previous_answers, asked))

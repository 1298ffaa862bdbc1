"""The two small trained heads over sentence embeddings, and the features each one reads.

domain head:     [message embedding, previous turn's domain probabilities, has-previous flag]
escalation head: [message embedding, message ⊙ previous-answer embedding, has-previous flag]

The previous turn's domain probabilities carry a conversation's domain through vague follow-ups
("and in Rust?") and through chains of them; the product with the previous answer lets the
escalation head tell "that's wrong" about this answer from a new question that sounds alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from router.decision import DOMAINS
from router.embeddings import DIM

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DOMAIN_FEATURES = DIM + len(DOMAINS) + 1
ESCALATION_FEATURES = 2 * DIM + 1


def domain_features(messages: np.ndarray, previous_probs: np.ndarray | None = None) -> np.ndarray:
    """messages (n, DIM); previous_probs (n, 4) in DOMAINS order, rows of NaN where there is none."""
    n = len(messages)
    prior = np.zeros((n, len(DOMAINS)), np.float32) if previous_probs is None else previous_probs.astype(np.float32)
    has = ~np.isnan(prior).any(axis=1, keepdims=True)
    return np.hstack([messages, np.where(has, prior, 0.0), has.astype(np.float32)]).astype(np.float32)


def escalation_features(messages: np.ndarray, previous_answers: np.ndarray | None = None) -> np.ndarray:
    """messages (n, DIM); previous_answers (n, DIM) with rows of zeros where there is none."""
    previous = np.zeros_like(messages) if previous_answers is None else previous_answers
    has = (np.abs(previous).sum(axis=1, keepdims=True) > 0).astype(np.float32)
    return np.hstack([messages, messages * previous, has]).astype(np.float32)


class Head(nn.Module):
    """A one-hidden-layer MLP: enough over a good embedding, small enough to train in seconds."""

    def __init__(self, n_in: int, n_out: int, hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        self.config = {"n_in": n_in, "n_out": n_out, "hidden": hidden, "dropout": dropout}
        self.net = nn.Sequential(nn.Dropout(0.1), nn.Linear(n_in, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def probabilities(self, features: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        self.eval()
        with torch.inference_mode():
            logits = self(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))) / temperature
            if self.config["n_out"] == 1:
                return torch.sigmoid(logits[:, 0]).numpy()
            return torch.softmax(logits, dim=-1).numpy()

    def save(self, path: Path, meta: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"config": self.config, "meta": meta, "state": self.state_dict()}, path)

    @classmethod
    def load(cls, path: Path) -> tuple["Head", dict]:
        if not path.exists():
            raise FileNotFoundError(f"{path}: router head not trained; run python -m router.train")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        head = cls(**saved["config"])
        head.load_state_dict(saved["state"])
        head.eval()
        return head, saved["meta"]

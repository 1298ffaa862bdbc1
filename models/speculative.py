"""Speculative decoding: a small draft model proposes tokens, the base verifies them in one batch.

Not llama-cpp-python's `draft_model=` hook: that needs `logits_all=True`, which allocates
n_ctx × n_vocab floats (5 GB at 8k × 152k) and crashes past n_batch without it. Here the draft has
its own small context, and the base asks for logits only at the drafted positions.

Exactness: every token still comes from the base's own sampler, position by position, in the
same order as plain decoding; a drafted token is kept only where the base's sample equals it. So
greedy output is the base's, and sampled output has the base's distribution.

How many tokens to draft is chosen per step (`DraftLength`): from the measured acceptance rate
and the measured cost of a draft token and of verifying n tokens, pick the length with the most
expected tokens per second, down to 0 (plain decoding) when drafting does not pay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import llama_cpp
import numpy as np
from llama_cpp._internals import LlamaBatch, LlamaContext, LlamaModel

from models.errors import ModelFileError

LENGTHS = (0, 1, 2, 3, 4, 6, 8, 12, 16)  # draft lengths the controller chooses among


def vocabulary_mismatch(a: LlamaModel, b: LlamaModel) -> str | None:
    """Why two models cannot share tokens, or None when their vocabularies are identical."""
    if a.n_vocab() != b.n_vocab():
        return f"vocabulary sizes differ ({a.n_vocab():,} vs {b.n_vocab():,})"
    for token in range(a.n_vocab()):
        ta, tb = llama_cpp.llama_vocab_get_text(a.vocab, token), llama_cpp.llama_vocab_get_text(b.vocab, token)
        if ta != tb:
            return f"token {token} is {ta!r} in one and {tb!r} in the other"
    return None


class Draft:
    """The draft model with its own context (no adapters, one sequence), proposing greedy tokens."""

    def __init__(self, path: Path, base: LlamaModel, base_path: Path, n_ctx: int, n_batch: int,
                 n_threads: int, n_gpu_layers: int, verbose: bool = False):
        from models.engine import load_model  # the same file checks and error messages as the base

        self.path = Path(path)
        self.model = load_model(self.path, n_gpu_layers, verbose)
        mismatch = vocabulary_mismatch(base, self.model)
        if mismatch:
            raise ModelFileError(f"draft {self.path} does not share the vocabulary of base {base_path}: "
                                 f"{mismatch}. Use a draft from the same model family, or --no-draft.")
        params = LlamaContext.default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        self.ctx = LlamaContext(model=self.model, params=params, verbose=verbose)
        self.batch = LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=verbose)
        self.n_ctx, self.n_batch, self.n_vocab = n_ctx, n_batch, self.model.n_vocab()
        self.cached: list[int] = []

    def _decode(self, tokens: Sequence[int], start: int) -> None:
        self.batch.set_batch(tokens, n_past=start, logits_all=False)
        self.ctx.decode(self.batch)
        self.cached.extend(tokens)

    def propose(self, context: Sequence[int], k: int, min_confidence: float) -> list[int]:
        """Up to k greedy tokens that follow `context`; stops early where the draft's own top
        probability falls below min_confidence (a guess the base would likely reject)."""
        keep = 0
        for a, b in zip(self.cached, context[:-1]):
            if a != b:
                break
            keep += 1
        llama_cpp.llama_memory_seq_rm(self.ctx.memory, 0, keep, -1)
        del self.cached[keep:]
        for start in range(keep, len(context), self.n_batch):
            self._decode(context[start:start + self.n_batch], start)
        proposal: list[int] = []
        while len(proposal) < k and len(self.cached) < self.n_ctx - 1:
            logits = np.ctypeslib.as_array(self.ctx.get_logits_ith(-1), shape=(self.n_vocab,))
            token = int(logits.argmax())
            confidence = 1.0 / float(np.exp(logits - logits[token]).sum())
            if proposal and confidence < min_confidence:
                break
            proposal.append(token)
            if len(proposal) < k:
                self._decode([token], len(self.cached))
        return proposal


class DraftLength:
    """Chooses the draft length per step from measured acceptance and measured costs."""

    def __init__(self, fixed: int | None = None):
        self.fixed = fixed              # a fixed length (benchmarks); None = adaptive
        self.accepted = 2.0             # pseudo-counts: start by assuming 2 of 3 drafts are kept
        self.rejected = 1.0
        self.draft_s: float | None = None  # seconds per draft token
        self.verify_s: dict[int, float] = {}  # seconds to decode n tokens on the base
        self.steps_since_draft = 0
        self.best = 4
        self.probe_every = 32           # plain steps between probes while drafting does not pay

    @property
    def acceptance(self) -> float:
        return self.accepted / (self.accepted + self.rejected)

    def _verify_cost(self, n: int) -> float:
        if n in self.verify_s:
            return self.verify_s[n]
        known = sorted(self.verify_s)
        one = self.verify_s.get(1, self.verify_s[known[0]] / max(1, known[0]) if known else 1.0)
        above = [m for m in known if m > 1]
        if not above:
            return one * (1 + 0.15 * (n - 1))  # before measuring: batching is cheap on most hardware
        m = above[-1] if n > above[-1] else min(above, key=lambda m: abs(m - n))
        return one + (self.verify_s[m] - one) * (n - 1) / (m - 1)

    def choose(self) -> int:
        if self.fixed is not None:
            return self.fixed
        if self.draft_s is None:
            return 4  # draft once, to measure
        self.steps_since_draft += 1
        if self.best == 0 and self.steps_since_draft >= self.probe_every:  # acceptance may have changed
            return 1
        return self.best

    def update(self, drafted: int, accepted: int, draft_s: float, verify_s: float) -> None:
        n = drafted + 1
        self.verify_s[n] = verify_s if n not in self.verify_s else 0.8 * self.verify_s[n] + 0.2 * verify_s
        if drafted:
            per_token = draft_s / drafted
            self.draft_s = per_token if self.draft_s is None else 0.8 * self.draft_s + 0.2 * per_token
            # Geometric model: each drafted token kept with probability a until the first miss.
            decay = 0.97 ** drafted  # forget old evidence so the rate follows the conversation
            self.accepted = self.accepted * decay + accepted
            self.rejected = self.rejected * decay + (1 if accepted < drafted else 0)
            self.steps_since_draft = 0
        if drafted or self.steps_since_draft % 8 == 0:  # re-plan; cheap, but not every plain token
            was, self.best = self.best, self._plan()
            if drafted and was == 0:  # a probe: back off while drafting keeps not paying
                self.probe_every = 32 if self.best else min(2 * self.probe_every, 1024)

    def _plan(self) -> int:
        if self.draft_s is None:
            return 4
        a = min(self.acceptance, 0.999)

        def rate(k: int) -> float:  # expected tokens per second with k drafted tokens
            tokens = (1 - a ** (k + 1)) / (1 - a)
            return tokens / (k * self.draft_s + self._verify_cost(k + 1))

        return max(LENGTHS, key=rate)


def expected_speedup(acceptance: float, draft_len: int, cost_ratio: float) -> float:
    """Leviathan et al. 2023: (1 − α^(γ+1)) / ((1 − α)(γc + 1))."""
    a = min(acceptance, 0.999999)
    return (1 - a ** (draft_len + 1)) / ((1 - a) * (draft_len * cost_ratio + 1))


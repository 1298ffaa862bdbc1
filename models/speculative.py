"""Speculative decoding: a small draft model proposes tokens, the base verifies them in one batch.

Not llama-cpp-python's `draft_model=` hook: that needs `logits_all=True`, which allocates
n_ctx × n_vocab floats (5 GB at 8k × 152k) and crashes past n_batch without it. Here the draft has
its own small context, and the base asks for logits only at the drafted positions.

Exactness: every token still comes from the base's own sampler, position by position, in the
same order as plain decoding; a drafted token is kept only where the base's sample equals it. So
greedy output is the base's, and sampled output has the base's distribution.

How many tokens to draft is chosen per step (`DraftLength`): draft, or decode plainly, by which
has measurably delivered more tokens per second; a draft stops early where the draft doubts it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import llama_cpp
import numpy as np
from llama_cpp._internals import LlamaBatch, LlamaContext, LlamaModel

from models.errors import ModelFileError


# A base may pad its vocabulary past the draft's (Qwen2.5-7B has 152,064 rows, the 0.5B 151,936):
# the draft then only ever proposes tokens the base has. llama.cpp's own speculative example
# allows the same slack.
MAX_PADDING = 128


def vocabulary_mismatch(base: LlamaModel, draft: LlamaModel) -> str | None:
    """Why the draft cannot propose tokens for the base, or None when every draft token is the
    same token in the base (the base may have up to MAX_PADDING more at the end)."""
    n_base, n_draft = base.n_vocab(), draft.n_vocab()
    if not 0 <= n_base - n_draft <= MAX_PADDING:
        return f"vocabulary sizes differ ({n_base:,} in the base vs {n_draft:,} in the draft)"
    for token in range(n_draft):
        ta, tb = llama_cpp.llama_vocab_get_text(base.vocab, token), llama_cpp.llama_vocab_get_text(draft.vocab, token)
        if ta != tb:
            return f"token {token} is {ta!r} in the base and {tb!r} in the draft"
    return None


class Draft:
    """The draft model with its own context (no adapters, one sequence), proposing greedy tokens."""

    def __init__(self, path: Path, base: LlamaModel, base_path: Path, n_ctx: int, n_batch: int,
                 n_threads: int, n_gpu_layers: int, verbose: bool = False, batch_threads: int | None = None):
        from models.engine import load_model  # the same file checks and error messages as the base

        self.path = Path(path)
        # No repacked copy of the draft's weights: measured at n_ctx 8192 with a 32k vocabulary,
        # it took the draft's extra RSS from 223 MB to 159 MB (bound: weights + KV + 64 MB = 201 MB).
        self.model = load_model(self.path, n_gpu_layers, verbose, repack=False, role="draft")
        mismatch = vocabulary_mismatch(base, self.model)
        if mismatch:
            raise ModelFileError(f"draft {self.path} does not share the vocabulary of base {base_path}: "
                                 f"{mismatch}. Use a draft from the same model family, or --no-draft.")
        params = LlamaContext.default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch
        params.n_threads = params.n_threads_batch = n_threads
        self.n_threads, self.batch_threads = n_threads, batch_threads or n_threads
        params.no_perf = True
        self.ctx = LlamaContext(model=self.model, params=params, verbose=verbose)
        self.batch = LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=verbose)
        self.n_ctx, self.n_batch, self.n_vocab = n_ctx, n_batch, self.model.n_vocab()
        self.cached: list[int] = []

    def _decode(self, tokens: Sequence[int], start: int) -> None:
        self.batch.set_batch(tokens, n_past=start, logits_all=False)
        self.ctx.decode(self.batch)
        self.cached.extend(tokens)

    def next_token_logits(self, context: Sequence[int]) -> np.ndarray:
        """The draft's logits after `context` (a copy)."""
        self.propose(context, 0, 1.0)  # decodes what the cache lacks, proposes nothing
        return np.ctypeslib.as_array(self.ctx.get_logits_ith(-1), shape=(self.n_vocab,)).copy()

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
        # Catching up on a prompt (a new turn, a reopened chat, another visitor's) runs between the
        # first token and the second, when the router is done: compute-bound, it splits across the
        # engine's batch threads, as the base's prompt does (a 1,600-token chat, first to second
        # token: 687 -> 404 ms, benchmarks/speculative.py). The few tokens a step leaves behind stay
        # on the engine's threads, as the base's verify batches do.
        prompt = len(context) - keep > DraftLength.MAX_DRAFT + 1
        llama_cpp.llama_set_n_threads(self.ctx.ctx, self.n_threads, self.batch_threads if prompt else self.n_threads)
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
    """Chooses each step between drafting (up to MAX_DRAFT tokens, cut short where the draft's own
    confidence drops) and plain decoding, by the tokens per second each has measurably delivered.

    A model of acceptance and cost (Leviathan et al.) picked lengths worse than measuring: on this
    CPU, verifying n tokens costs far from n × one token and varies step to step, and a geometric
    acceptance model misjudges a draft that is right for long runs and then wrong. Measured rates
    of the two arms are robust to both; the confidence cut chooses the length within a step.
    """

    MAX_DRAFT = 16
    DECAY = 0.95        # weight of older steps in each arm's measured rate
    MIN_CONFIDENCE = 0.2

    def __init__(self, fixed: int | None = None):
        self.fixed = fixed                          # a fixed length (benchmarks); None = adaptive
        self.measured: dict[bool, list[float]] = {}  # drafting? -> decayed [tokens, seconds]
        self.kept = 0.5                             # recent share of drafted tokens the base kept
        self.probe_every = 32                       # plain steps between tries while drafting loses
        self.plain_steps = 0
        self.drafting = False

    @property
    def min_confidence(self) -> float:
        # While nearly every draft is kept, the draft's doubt says little: draft the full length.
        return 0.0 if self.fixed is None and self.kept >= 0.9 else self.MIN_CONFIDENCE

    def choose(self) -> int:
        if self.fixed is not None:
            return self.fixed
        if False not in self.measured or True not in self.measured:  # measure plain, then drafting
            self.drafting = False in self.measured
        else:
            (pt, ps), (dt, ds) = self.measured[False], self.measured[True]
            self.drafting = dt / ds >= pt / ps
            if not self.drafting:
                self.plain_steps += 1
                if self.plain_steps >= self.probe_every:  # acceptance may have changed: try again,
                    self.plain_steps = 0                  # less often each time it still loses
                    self.probe_every = min(2 * self.probe_every, 1024)
                    self.drafting = True
            else:
                self.probe_every = 32
        return self.MAX_DRAFT if self.drafting else 0

    def update(self, drafted: int, accepted: int, draft_s: float, verify_s: float) -> None:
        arm = self.measured.setdefault(drafted > 0, [0.0, 0.0])
        arm[0] = self.DECAY * arm[0] + accepted + 1
        arm[1] = self.DECAY * arm[1] + draft_s + verify_s
        if drafted:
            self.kept = 0.9 * self.kept + 0.1 * accepted / drafted


def expected_speedup(acceptance: float, draft_len: int, cost_ratio: float) -> float:
    """Leviathan et al. 2023: (1 − α^(γ+1)) / ((1 − α)(γc + 1))."""
    a = min(acceptance, 0.999999)
    return (1 - a ** (draft_len + 1)) / ((1 - a) * (draft_len * cost_ratio + 1))


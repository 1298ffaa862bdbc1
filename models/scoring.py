"""Scoring a message for the router: the negative log-likelihood of its tokens under the plain base,
from logits rows llama.cpp computes while it prefills the prompt.

On a large vocabulary those rows are the cost of routing: Qwen2.5-0.5B's output layer is 136 M
multiply-adds a row against 358 M for the rest of the model, and a reply needs it on one row only.
So a second context on the same weights (SideScorer), run on the cores the base's own threads
leave to the router, scores the message's first rows while the reply's context prefills the whole
prompt and scores the rest. Each context is one pass over the weights, in parallel. It holds one
conversation; after a complete reply it catches up with it while the person reads (SideScorer.catch_up),
so that on a follow-up it prefills as little before its rows as on a first message.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence

import llama_cpp
import numpy as np
from llama_cpp._internals import LlamaBatch, LlamaContext, LlamaModel


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens a and b share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def keep_prefix(ctx: LlamaContext, seq: int, cached: list[int], tokens: Sequence[int]) -> int:
    """Cut KV sequence `seq` (holding `cached`, which is cut too) back to the longest start it shares
    with `tokens`; returns its length. Where llama.cpp cannot cut a sequence part-way, it is emptied."""
    keep = common_prefix(cached, tokens)
    if not llama_cpp.llama_memory_seq_rm(ctx.memory, seq, keep, -1):
        llama_cpp.llama_memory_seq_rm(ctx.memory, seq, -1, -1)
        keep = 0
    del cached[keep:]
    return keep


def decode(ctx: LlamaContext, batch: LlamaBatch, tokens: Sequence[int], start: int, seq: int,
           outputs: range = range(0)) -> None:
    """Decode `tokens` at positions start.. into sequence `seq`, with logits for the tokens at the
    indexes in `outputs`, and always for the last one."""
    b = batch.batch
    b.n_tokens = len(tokens)
    for i, token in enumerate(tokens):
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, start + i, 1, i in outputs
        b.seq_id[i][0] = seq
    b.logits[len(tokens) - 1] = True
    ctx.decode(batch)


def nll_sum(logits: np.ndarray, targets: Sequence[int]) -> float:
    """Sum over rows of -log softmax(row)[target]. A few rows at a time (~1 MB, one row of a
    151,936-token vocabulary) through one scratch buffer: each pass over them stays in the CPU's
    cache, and no temporary as large as the logits is made. 110 rows of 151,936: 50 -> 23 ms
    (and no 230 ms outliers faulting in fresh 67 MB arrays)."""
    block = max(1, (1 << 18) // logits.shape[1])
    scratch = np.empty((min(block, len(logits)), logits.shape[1]), np.float32)
    total = 0.0
    for i in range(0, len(logits), block):
        rows = logits[i:i + block]
        top = rows.max(axis=1, keepdims=True)
        shifted = np.subtract(rows, top, out=scratch[:len(rows)])
        log_z = np.log(np.exp(shifted, out=shifted).sum(axis=1, dtype=np.float64)) + top[:, 0]
        total += float((log_z - rows[np.arange(len(rows)), targets[i:i + block]]).sum())
    return total


def prefill_scoring(decode_at: Callable[[Sequence[int], int, range], None], logits: Callable[[int], np.ndarray],
                    nll: Callable[[np.ndarray, Sequence[int]], float], prompt: Sequence[int], at: int, upto: int,
                    rows: range, chunk: int, n_batch: int) -> float:
    """Decode prompt[at:upto] with decode_at(tokens, start, outputs), in batches that ask for at most
    `chunk` logits rows (memory: chunk × n_vocab however long the message), with logits on the
    positions in `rows` (and each batch's last, which the reply samples from). Returns the sum over
    those positions p of -log P(prompt[p + 1]). logits(n) is the last batch's n output rows."""
    total = 0.0
    while at < upto:
        first = max(rows.start - at, 0)
        size = min(n_batch, upto - at, first + chunk)
        scored = range(max(at, rows.start), min(at + size, rows.stop))
        decode_at(prompt[at:at + size], at, range(first, first + len(scored)))
        if len(scored):
            n_out = len(scored) + (scored.stop < at + size)  # and the batch's last row
            total += nll(logits(n_out)[:len(scored)], [prompt[p + 1] for p in scored])
        at += size
    return total


class SideScorer:
    """A second context on the base's weights (no adapters, one sequence, its own KV cache), decoding
    on its own thread: it scores the first rows of a message while the reply's context prefills."""

    def __init__(self, model: LlamaModel, n_ctx: int, n_batch: int, n_threads: int, kv_type: int | None = None,
                 verbose: bool = False):
        params = LlamaContext.default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        if kv_type is not None:
            params.type_k = params.type_v = kv_type
        self.ctx = LlamaContext(model=model, params=params, verbose=verbose)
        self.batch = LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=verbose)
        self.n_ctx, self.n_batch, self.n_vocab = n_ctx, n_batch, model.n_vocab()
        self.cached: list[int] = []  # the tokens in its KV cache
        self.last_seconds = 0.0      # how long its last job took
        self._scores = 0             # scores submitted: a catch-up stops when one comes after it
        self._last: Future | None = None  # the job submitted last
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="side-scorer")

    def cached_prefix(self, tokens: Sequence[int]) -> int:
        """How many of `tokens`' first tokens its KV cache holds (read between jobs)."""
        return common_prefix(self.cached, tokens)

    def submit(self, prompt: Sequence[int], rows: range, chunk: int) -> Future:
        """Start scoring positions `rows` of `prompt` (the NLL sum of their next tokens) on its thread."""
        self._scores += 1
        return self._submit(self._score, list(prompt[:rows.stop + 1]), rows, chunk)  # + the last target

    def catch_up(self, tokens: Sequence[int], batch: int) -> None:
        """Prefill what it does not hold of `tokens` (a conversation the next message will continue)
        on its thread, `batch` tokens at a time, each batch a job of its own: a score submitted
        meanwhile runs after the batch in flight and ends the catch-up, so the next message does not
        wait for it; so does the interpreter's exit, which takes no new jobs."""
        self._submit(self._catch_up, list(tokens[:self.n_ctx]), batch, self._scores)

    def settle(self) -> None:
        """Wait until its jobs, a catch-up to its end, are done."""
        while (job := self._last) is not None and not job.done():
            job.result()

    def _submit(self, fn: Callable, *args) -> Future:
        self._last = self._worker.submit(fn, *args)
        return self._last

    def _catch_up(self, tokens: list[int], batch: int, scores: int, at: int | None = None) -> None:
        if self._scores != scores:  # a score came in: its prompt is the one to hold now
            return
        at = keep_prefix(self.ctx, 0, self.cached, tokens) if at is None else at
        if at < len(tokens):
            decode(self.ctx, self.batch, tokens[at:at + batch], at, 0)
            self.cached.extend(tokens[at:at + batch])
            try:
                self._submit(self._catch_up, tokens, batch, scores, at + batch)
            except RuntimeError:  # the interpreter is exiting
                pass

    def _score(self, prompt: list[int], rows: range, chunk: int) -> float:
        started = time.perf_counter()
        keep = keep_prefix(self.ctx, 0, self.cached, prompt[:rows.start])

        def decode_at(tokens: Sequence[int], start: int, outputs: range) -> None:
            decode(self.ctx, self.batch, tokens, start, 0, outputs)
            self.cached.extend(tokens)

        def logits(n: int) -> np.ndarray:
            return np.ctypeslib.as_array(self.ctx.get_logits(), shape=(n, self.n_vocab))

        try:
            return prefill_scoring(decode_at, logits, nll_sum, prompt, keep, rows.stop, rows, chunk, self.n_batch)
        finally:
            self.last_seconds = time.perf_counter() - started

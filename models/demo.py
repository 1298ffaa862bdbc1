"""The demo model set: a small llama-architecture base, a draft that shares its vocabulary, and
three LoRA modifiers, written with the `gguf` package so the whole app runs offline on real
llama.cpp inference. The weights are random, so replies are random text.

Every build is byte-identical (seeded uniform draws scaled with exact float32 arithmetic, no
platform maths library in the path), so the digests in models/manifest.json hold everywhere.

    python -m models.demo --out DIR            # build base/draft/code/reasoning/automation .gguf.zst
    python -m models.demo --update-manifest    # rewrite the demo profile's digests after a change
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import gguf
import numpy as np
import zstandard

from models.store import partial_path

logging.getLogger("gguf").setLevel(logging.WARNING)  # its writer logs every file at INFO

MODIFIERS = ("code", "reasoning", "automation")
ROLE_FILES = {"base": "base.gguf", "draft": "draft.gguf", **{m: f"{m}.gguf" for m in MODIFIERS}}

# A ChatML-style template. Deliberately not a byte copy of llama-cpp-python's built-in ChatML
# (which it would silently swap for its own formatter); the app builds prompt tokens itself.
CHAT_TEMPLATE = (
    "{# cogumi demo chat template (ChatML) #}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
UNK, BOS, EOS, IM_START, IM_END = range(5)

WORDS = """the of and to a in is you that it he was for on are as with his they I at be this have
from or one had by word but not what all were we when your can said there use an each which she do
how their if will up other about out many then them these so some her would make like him into time
has look two more write go see number no way could people my than first water been call who its now
find long down day did get come made may part model router code reason plan step data file run test
def return import class print function const let var else while int str list dict None True False
self async await yield lambda select from where join table query error stack trace fix bug email
calendar meeting schedule every Monday send ticket create api call tool task because therefore if
then proof sum total count hello thanks please sorry why what when""".split()


@dataclass(frozen=True)
class DemoSpec:
    n_embd: int = 256          # small: the demo set builds in about a second and decodes fast on 2 cores
    n_ff: int = 704
    n_head: int = 4
    n_head_kv: int = 2         # grouped-query attention, as the real bases use
    draft_layers: int = 2      # the draft is these layers alone
    extra_layers: int = 4      # the base is the draft's layers plus these
    extra_scale: float = 0.02  # output projections of the extra layers: 0 makes base == draft,
                               # small keeps them agreeing on most greedy tokens
    logit_scale: float = 3.0   # spread of the output logits: peaked enough to read as words
    eos_gain: float = 25.0     # pull toward <|im_end|>: sampled replies end on their own (median ~70 tokens)
    context_length: int = 4096
    min_vocab: int = 0         # pad the vocabulary (the large-vocabulary benchmark pair)
    lora_rank: int = 8
    lora_strength: float = 0.6  # how far a modifier moves the base's outputs
    seed: int = 20261121
    weight_type: str = "f16"   # "f32" for exactness tests (LoRA against merged weights), "q8_0" as real sets


def vocabulary(spec: DemoSpec) -> tuple[list[str], list[float], list[int]]:
    """SPM vocabulary: control tokens, 256 byte tokens (so any UTF-8 text encodes), printable
    characters, then every prefix of each "▁word" so SPM's bigram merges can reach whole words."""
    tokens, types = list(SPECIAL_TOKENS), [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * 4
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["▁"] + [chr(c) for c in range(33, 127)]
    for word in WORDS:
        pieces += ["▁" + word[:k] for k in range(1, len(word) + 1)]
    pieces = list(dict.fromkeys(pieces))
    pieces += [f"▁w{i}" for i in range(spec.min_vocab - len(tokens) - len(pieces))]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    scores = [0.0] * (len(tokens) - len(pieces)) + [-float(i) for i in range(len(pieces))]
    return tokens, scores, [int(t) for t in types]


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    # Uniform draws with exact IEEE float32 scaling: identical bytes on every platform.
    half_width = np.float32(std * math.sqrt(3.0))
    return (rng.random(shape, dtype=np.float32) * np.float32(2) - np.float32(1)) * half_width


def _dtype(spec: DemoSpec) -> type:
    return {"f16": np.float16, "f32": np.float32, "q8_0": np.float32}[spec.weight_type]  # q8_0: see _finish


def _layer(rng: np.random.Generator, spec: DemoSpec, out_scale: float) -> dict[str, np.ndarray]:
    e, f = spec.n_embd, spec.n_ff
    kv = e // spec.n_head * spec.n_head_kv
    dtype = _dtype(spec)
    w = lambda rows, cols, scale=1.0: (_uniform(rng, (rows, cols), 1 / math.sqrt(cols)) * np.float32(scale)).astype(dtype)
    return {
        "attn_norm.weight": np.ones(e, np.float32),
        "attn_q.weight": w(e, e),
        "attn_k.weight": w(kv, e),
        "attn_v.weight": w(kv, e),
        "attn_output.weight": w(e, e, out_scale),
        "ffn_norm.weight": np.ones(e, np.float32),
        "ffn_gate.weight": w(f, e),
        "ffn_up.weight": w(f, e),
        "ffn_down.weight": w(e, f, out_scale),
    }


def _weights(spec: DemoSpec, n_vocab: int) -> tuple[dict[str, np.ndarray], list[dict], list[dict]]:
    rng = np.random.default_rng(spec.seed)
    e = spec.n_embd
    # A shared direction in every token embedding survives the residual stream; the <|im_end|>
    # output row points along it, so the end-of-turn token gets a steady, moderate probability.
    shared = _uniform(rng, (e,), 1.0)
    shared /= np.float32(np.sqrt(np.float32(np.dot(shared, shared))))
    embd = _uniform(rng, (n_vocab, e), 1.0) + shared * np.float32(2.0)
    # Logits of a few units: sampled replies vary, and whole words outrank byte and prefix tokens.
    words = {"▁" + w for w in WORDS}
    row_scale = np.array([1.0 if t in words else 0.3 for t in vocabulary(spec)[0]], np.float32)
    out = _uniform(rng, (n_vocab, e), spec.logit_scale / math.sqrt(e)) * row_scale[:, None]
    out[IM_END] = shared * np.float32(spec.eos_gain / math.sqrt(e))
    top = {
        "token_embd.weight": embd.astype(_dtype(spec)),
        "output_norm.weight": np.ones(e, np.float32),
        "output.weight": out.astype(_dtype(spec)),
    }
    draft_layers = [_layer(rng, spec, 0.5) for _ in range(spec.draft_layers)]
    extra_rng = np.random.default_rng(spec.seed + 1)
    extra_layers = [_layer(extra_rng, spec, spec.extra_scale) for _ in range(spec.extra_layers)]
    return top, draft_layers, extra_layers


def _writer(path: Path, spec: DemoSpec, name: str, n_layers: int) -> gguf.GGUFWriter:
    tokens, scores, types = vocabulary(spec)
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_name(name)
    w.add_context_length(spec.context_length)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv)
    w.add_rope_dimension_count(spec.n_embd // spec.n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "f32": gguf.LlamaFileType.ALL_F32,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[spec.weight_type])
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(UNK)
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(IM_END)
    w.add_add_bos_token(False)
    w.add_add_space_prefix(False)  # else SPM inserts "▁" after every control token
    w.add_chat_template(CHAT_TEMPLATE)
    return w


def _finish(w: gguf.GGUFWriter, tensors: dict[str, np.ndarray], weight_type: str = "f16") -> None:
    q8 = gguf.GGMLQuantizationType.Q8_0
    for name, array in tensors.items():
        # the real model sets' format (benchmarks, and the exactness tests of speculative decoding); a
        # LoRA B of rank under 32 has rows too short for a Q8_0 block and stays as it is
        if weight_type == "q8_0" and array.ndim == 2 and (array.dtype == np.uint8 or array.shape[-1] % 32 == 0):
            quantized = array if array.dtype == np.uint8 else gguf.quants.quantize(array, q8)  # uint8: done already
            w.add_tensor(name, quantized, raw_dtype=q8)
        else:
            w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_model(path: Path, spec: DemoSpec, role: str, merge: tuple[str, float] | None = None) -> None:
    """Write the base ("base") or the draft ("draft") as a plain GGUF. `merge=(modifier, scale)`
    writes the base with that LoRA folded into its weights, W + scale·alpha/rank·B·A, in float32:
    the reference a hot-swapped adapter must match."""
    n_vocab = len(vocabulary(spec)[0])
    top, draft_layers, extra_layers = _weights(spec, n_vocab)
    layers = draft_layers + (extra_layers if role == "base" else [])
    tensors = dict(top)
    for i, layer in enumerate(layers):
        tensors.update({f"blk.{i}.{k}": v for k, v in layer.items()})
    if merge:
        modifier, scale = merge
        lora = lora_tensors(spec, modifier)
        factor = np.float32(scale * 1.0)  # alpha == rank in the demo adapters, so alpha/rank == 1
        for name in [k.removesuffix(".lora_a") for k in lora if k.endswith(".lora_a")]:
            delta = lora[name + ".lora_b"] @ lora[name + ".lora_a"]
            tensors[name] = tensors[name].astype(np.float32) + factor * delta
    _finish(_writer(path, spec, f"cogumi-demo-{role}", len(layers)), tensors, spec.weight_type)


def write_shape(path: Path, spec: DemoSpec) -> None:
    """A base of spec's shape in Q8_0 whose layers all hold one layer's weights, for timing a real
    model's shape (benchmarks/router.py --huge: a 7B's 28 layers) without making its 30 GB of
    float32. llama.cpp loads each layer into its own memory, so it runs as a 7B does; its replies
    are noise."""
    n_vocab, n_layers = len(vocabulary(spec)[0]), spec.draft_layers + spec.extra_layers
    rng = np.random.default_rng(spec.seed)
    q8 = gguf.GGMLQuantizationType.Q8_0
    quantized = lambda a: gguf.quants.quantize(a, q8) if a.ndim == 2 else a  # one float32 matrix at a time
    tensors = {name: quantized(_uniform(rng, (n_vocab, spec.n_embd), 1.0)) for name in ("token_embd.weight", "output.weight")}
    tensors["output_norm.weight"] = np.ones(spec.n_embd, np.float32)
    layer = {k: quantized(v) for k, v in _layer(rng, replace(spec, weight_type="f32"), 0.5).items()}
    tensors.update({f"blk.{i}.{k}": v for i in range(n_layers) for k, v in layer.items()})
    _finish(_writer(path, spec, "cogumi-shape", n_layers), tensors, "q8_0")


def lora_tensors(spec: DemoSpec, modifier: str) -> dict[str, np.ndarray]:
    """A and B for every attention-query/value and feed-forward-up/down weight of the base.
    numpy shapes: A (rank, n_in), B (n_out, rank), i.e. ggml A [n_in, rank], B [rank, n_out]."""
    rng = np.random.default_rng(spec.seed + 100 + MODIFIERS.index(modifier))
    e, f, r = spec.n_embd, spec.n_ff, spec.lora_rank
    kv = e // spec.n_head * spec.n_head_kv
    shapes = {"attn_q": (e, e), "attn_v": (kv, e), "ffn_up": (f, e), "ffn_down": (e, f)}
    tensors = {}
    for i in range(spec.draft_layers + spec.extra_layers):
        for target, (n_out, n_in) in shapes.items():
            tensors[f"blk.{i}.{target}.weight.lora_a"] = _uniform(rng, (r, n_in), 1 / math.sqrt(n_in))
            tensors[f"blk.{i}.{target}.weight.lora_b"] = _uniform(rng, (n_out, r), spec.lora_strength / math.sqrt(r))
    return tensors


def write_lora(path: Path, spec: DemoSpec, modifier: str, alpha: float | None = None) -> None:
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_name(f"cogumi-demo-{modifier}")
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(spec.lora_rank if alpha is None else alpha))
    _finish(w, lora_tensors(spec, modifier), spec.weight_type)


def write_role(path: Path, spec: DemoSpec, role: str) -> None:
    if role in MODIFIERS:
        write_lora(path, spec, role)
    else:
        write_model(path, spec, role)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def compress(src: Path, dst: Path, level: int = 10) -> None:
    tmp = partial_path(dst)
    try:
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            # The frame's checksum lets decompression catch a damaged byte where no digest is known
            # (your own files), as `zstd` does by default.
            zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True).copy_stream(
                fin, fout, size=src.stat().st_size)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def build_demo_set(out_dir: Path, spec: DemoSpec = DemoSpec()) -> dict[str, dict]:
    """Write every role as ROLE.gguf.zst into out_dir; return role → {file, sha256, size} of the
    decompressed GGUF (what the manifest records)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    built = {}
    for role, name in ROLE_FILES.items():
        plain = partial_path(out_dir / name, "build-")
        try:
            write_role(plain, spec, role)
            compress(plain, out_dir / (name + ".zst"))
            built[role] = {"file": name + ".zst", "sha256": sha256_file(plain), "size": plain.stat().st_size}
        finally:
            plain.unlink(missing_ok=True)
    return built


def _folder(text: str) -> Path:
    if not text.strip():  # Path("") is the current folder, where the set was written
        raise argparse.ArgumentTypeError(f"a folder, not {text!r}")
    return Path(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=_folder, default=None, help="folder for the .gguf.zst files")
    parser.add_argument("--update-manifest", action="store_true", help="write the digests into models/manifest.json")
    args = parser.parse_args()
    from models.manifest import MANIFEST_PATH, demo_dir

    out = args.out or demo_dir(None)
    try:
        built = build_demo_set(out)
    except OSError as exc:  # a file where the folder goes, a read-only or full disk: a traceback before
        print(f"error: {exc.filename or out}: could not write the demo model set ({exc.strerror or exc}); "
              f"choose another folder with --out.", file=sys.stderr)
        sys.exit(2)
    for role, info in built.items():
        print(f"{role:11s} {info['size']:>11,d} B  sha256 {info['sha256']}  {out / info['file']}")
    if args.update_manifest:
        manifest = json.loads(MANIFEST_PATH.read_text())
        for entry in manifest["profiles"]["demo"]["files"]:
            entry.update(sha256=built[entry["name"]]["sha256"], size=built[entry["name"]]["size"])
        MANIFEST_PATH.write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"updated {MANIFEST_PATH}")


if __name__ == "__main__":
    main()

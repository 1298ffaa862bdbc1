"""LoRA modifiers: loaded once on the one base model, switched per message on the live context.

llama.cpp aborts or misbehaves on some bad adapter files rather than returning an error, and
`Llama(lora_path=bad)` segfaults later, so every file is checked here in Python first with the
`gguf` reader (type, architecture, alpha, tensor pairs and shapes against the base). A file that
fails is left out with its reason; the app starts without it.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import llama_cpp

from modifiers.errors import AdapterError


@dataclass
class Modifier:
    name: str
    path: Path
    scale: float
    handle: object = field(repr=False)  # llama_adapter_lora_p; freed with the model, which owns it


def check_adapter(path: Path, base_arch: str | None, base_shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise AdapterError naming the file and the reason if llama.cpp should not load it. The base
    is described by its architecture and tensor shapes (the engine reads them from the header:
    gguf.GGUFReader took ~10 s over a 152k-token vocabulary); the adapter is small and read in full."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: LoRA file not found." if not path.exists() else f"{path}: is not a file.")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise AdapterError(f"{path}: not a GGUF file.")
    try:
        lora = gguf.GGUFReader(path)
    except Exception as exc:  # truncated or malformed: the reader cannot map the tensors (its own words,
        # numpy's "cannot reshape array of size…", say nothing to a person)
        raise AdapterError(f"{path}: cannot read this GGUF ({path.stat().st_size:,} bytes): the file is corrupt or "
                           f"truncated. Copy or download it again.") from exc

    def text(key: str) -> str | None:
        f = lora.fields.get(key)
        return f.contents() if f is not None else None

    if text("general.type") == "model" or (text("general.type") is None and "tokenizer.ggml.model" in lora.fields):
        raise AdapterError(f"{path}: is a model, not a LoRA adapter: a modifier is a LoRA GGUF made for this base "
                           f"(llama.cpp's convert_lora_to_gguf.py writes one).")
    if text("general.type") != "adapter" or text("adapter.type") != "lora":
        raise AdapterError(f"{path}: not a LoRA adapter (general.type={text('general.type')!r}, "
                           f"adapter.type={text('adapter.type')!r}).")
    arch = text("general.architecture")
    if arch != base_arch:
        raise AdapterError(f"{path}: made for architecture {arch!r}, but the base model is {base_arch!r}.")
    alpha = lora.fields.get("adapter.lora.alpha")
    if alpha is None or alpha.types != [gguf.GGUFValueType.FLOAT32]:
        kind = "missing" if alpha is None else f"of type {alpha.types[0].name}, not FLOAT32"
        raise AdapterError(f"{path}: adapter.lora.alpha is {kind}.")

    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for t in lora.tensors:
        target, _, part = t.name.rpartition(".lora_")
        if part not in ("a", "b"):
            raise AdapterError(f"{path}: tensor {t.name!r} is not a LoRA A or B matrix.")
        pairs.setdefault(target, {})[part] = tuple(int(n) for n in t.shape)
    if not pairs:
        raise AdapterError(f"{path}: has no LoRA tensors.")
    for target, ab in pairs.items():
        if set(ab) != {"a", "b"}:
            raise AdapterError(f"{path}: {target} has lora_{'a' if 'a' in ab else 'b'} but not its pair.")
        if target not in base_shapes:
            raise AdapterError(f"{path}: adapts {target}, which the base model does not have (wrong base model?).")
        (a_in, a_rank), (b_rank, b_out) = ab["a"][:2], ab["b"][:2]
        w_in, w_out = base_shapes[target][:2]
        if (a_in, b_out) != (w_in, w_out) or a_rank != b_rank:
            raise AdapterError(f"{path}: {target} is {w_in}x{w_out} in the base, but the adapter's A is "
                               f"{a_in}x{a_rank} and B is {b_rank}x{b_out} (wrong base model?).")


class ModifierRegistry:
    """The modifiers that loaded, and why the others did not."""

    def __init__(self, model: object, entries: dict[str, tuple[Path, float]], base_arch: str | None = None,
                 base_shapes: dict[str, tuple[int, ...]] | None = None):
        """model: the loaded base (llama_model_p); base_arch and base_shapes describe it, as its
        file says (general.architecture; tensor name → shape in ggml order), for check_adapter."""
        self.model = model
        self.available: dict[str, Modifier] = {}
        self.failed: dict[str, str] = {}
        for name, (path, scale) in entries.items():
            try:
                check_adapter(path, base_arch, base_shapes or {})
                handle = llama_cpp.llama_adapter_lora_init(model, str(path).encode())
                if not handle:  # a NULL pointer here is falsy but not None
                    raise AdapterError(f"{path}: llama.cpp refused this adapter.")
                self.available[name] = Modifier(name, Path(path), scale, handle)
            except AdapterError as exc:
                self.failed[name] = str(exc)
        self._active: str | None = None

    @property
    def names(self) -> list[str]:
        return list(self.available)

    @property
    def active(self) -> str | None:
        return self._active

    def refuse(self, name: str, reason: str) -> None:
        """Leave out a modifier that loaded but does not work (Engine.check_output), with its reason."""
        del self.available[name]
        self.failed[name] = reason

    def activate(self, ctx: object, name: str | None) -> None:
        """Switch the context to modifier `name` (None: the plain base). Weights are untouched;
        only the list of adapters applied at the next decode changes."""
        if name == self._active:
            return
        if name is None:
            llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            if name not in self.available:
                raise AdapterError(self.failed.get(name, f"no modifier named {name!r}"))
            m = self.available[name]
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(m.handle)
            scales = (ctypes.c_float * 1)(m.scale)
            if llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, scales) != 0:
                raise AdapterError(f"{m.path}: llama.cpp could not apply this adapter.")
        self._active = name

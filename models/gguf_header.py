"""Read a GGUF file's metadata (its key–value header) and refuse the values llama.cpp would abort
on: GGML_ASSERT in its loader ends the whole process (SIGABRT, no Python exception), so an absurd
layer or expert count in a damaged or hostile file would take the app down with it.

A small reader of the header alone, not gguf.GGUFReader: that one maps every tensor and builds an
object per vocabulary entry, ~10 s for a 152k-token vocabulary; this skips arrays: 0.04 s there.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from models.errors import ModelFileError

# llama.cpp's own limits (src/llama-hparams.h, as built by llama-cpp-python 0.3.36); past them its
# loader asserts and aborts. Measured: 512 layers and 1024 experts load, 513 and 1025 abort.
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024
MAX_CONTEXT = (1 << 31) - 1  # llama_model_n_ctx_train() is an int32: larger reads back negative

# GGUF value types: id -> struct format of one scalar (8: string, 9: array)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class _Header:
    def __init__(self, data: mmap.mmap, path: Path):
        self.data, self.at, self.path = data, 0, path

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.at + size > len(self.data):
            raise ModelFileError(f"{self.path}: the GGUF header ends early (at byte {self.at:,}); the file is "
                                 f"truncated or corrupt.")
        (value,) = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += size
        return value

    def string(self) -> str:
        n = self.take("Q")
        if self.at + n > len(self.data):
            raise ModelFileError(f"{self.path}: a GGUF header string claims {n:,} bytes, past the end of the "
                                 f"file; the file is truncated or corrupt.")
        text = self.data[self.at:self.at + n].decode("utf-8", "replace")
        self.at += n
        return text

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, n = self.take("I"), self.take("Q")
            if item in _SCALARS:  # skipped: the checks below read scalars only
                self.at += n * struct.calcsize("<" + _SCALARS[item])
            elif item == _STRING:
                for _ in range(n):
                    length = self.take("Q")  # (not `self.at += self.take(...)`: take moves self.at)
                    self.at += length
            else:
                raise ModelFileError(f"{self.path}: GGUF array of unknown type {item}; the file is corrupt.")
            if self.at > len(self.data):
                raise ModelFileError(f"{self.path}: a GGUF header array runs past the end of the file; the file "
                                     f"is truncated or corrupt.")
            return None
        raise ModelFileError(f"{self.path}: GGUF value of unknown type {kind}; the file is corrupt.")


def read_metadata(path: Path) -> dict[str, object]:
    """The scalar and string values of a GGUF file's header (arrays are skipped), by key."""
    return read_header(path)[0]


def read_header(path: Path, tensors: bool = False) -> tuple[dict[str, object], dict[str, tuple[int, ...]]]:
    """(metadata, tensor shapes): the header's values as read_metadata gives them and, with
    `tensors`, each tensor's shape by name in ggml order (ne0, ne1, ...) from the tensor infos after
    the header: what a LoRA's A and B matrices are checked against (modifiers/registry.py)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24 or head[:4] != b"GGUF":
            raise ModelFileError(f"{path}: not a GGUF model file.")
        version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:])
        if version not in (2, 3):
            return {}, {}  # llama.cpp names the version it does not read
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:  # only the header's pages are read
            reader = _Header(data, path)
            reader.at = 24
            values, shapes = {}, {}
            for _ in range(n_kv):
                key = reader.string()
                values[key] = reader.value(reader.take("I"))
            for _ in range(n_tensors if tensors else 0):
                name = reader.string()
                n_dims = reader.take("I")
                if n_dims > 4:  # GGML_MAX_DIMS
                    raise ModelFileError(f"{path}: tensor {name!r} claims {n_dims} dimensions; the file is corrupt.")
                shapes[name] = tuple(reader.take("Q") for _ in range(n_dims))
                reader.take("I"), reader.take("Q")  # type, data offset
            return values, shapes


def check_hyperparameters(path: Path) -> None:
    """Raise ModelFileError naming the file and the key when a value would make llama.cpp abort
    (or build a context it cannot use) instead of returning an error; and for a LoRA adapter, where
    llama.cpp only says that a model key is missing."""
    meta = read_metadata(path)
    if meta.get("general.type") == "adapter":
        raise ModelFileError(f"{path}: is a LoRA adapter, not a model: pass it with --modifier NAME={Path(path).name} "
                             f"(NAME code, reasoning or automation) beside --model BASE.gguf.")
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return  # llama.cpp says what is missing

    def number(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def refuse(key: str, value: int, allowed: str) -> None:
        raise ModelFileError(f"{path}: {arch}.{key} is {value:,}, but {allowed}; the file is corrupt or not a "
                             f"model this version of llama.cpp can run.")

    layers = number("block_count")
    if layers is not None and not 1 <= layers <= LLAMA_MAX_LAYERS:
        refuse("block_count", layers, f"a model has 1 to {LLAMA_MAX_LAYERS} layers")
    experts, used = number("expert_count"), number("expert_used_count")
    if experts is not None and experts > LLAMA_MAX_EXPERTS:
        refuse("expert_count", experts, f"llama.cpp runs at most {LLAMA_MAX_EXPERTS} experts")
    if used is not None and used > (experts or 0):
        refuse("expert_used_count", used, f"the model has {experts or 0} experts")
    if experts and not used:
        refuse("expert_used_count", used or 0, f"a model with {experts} experts uses at least one per token")
    context = number("context_length")
    if context is not None and not 1 <= context <= MAX_CONTEXT:
        refuse("context_length", context, f"a trained context is 1 to {MAX_CONTEXT:,} tokens")

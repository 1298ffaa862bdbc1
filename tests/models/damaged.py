"""Model files damaged inside a format that stays whole: what llama.cpp loads without a word."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def with_nan(src: Path, dst: Path, tensor: str, row: int | None = None) -> Path:
    """A copy of a GGUF whose F16 or F32 `tensor` (or one row of it) holds NaN."""
    data = bytearray(src.read_bytes())
    t = next(t for t in gguf.GGUFReader(src).tensors if t.name == tensor)
    kind = {gguf.GGMLQuantizationType.F16: np.float16, gguf.GGMLQuantizationType.F32: np.float32}[t.tensor_type]
    width = int(t.shape[0]) * np.dtype(kind).itemsize  # bytes of one row
    start, end = (t.data_offset, t.data_offset + t.n_bytes) if row is None else \
        (t.data_offset + row * width, t.data_offset + (row + 1) * width)
    data[start:end] = np.full((end - start) // np.dtype(kind).itemsize, np.nan, kind).tobytes()
    dst.write_bytes(bytes(data))
    return dst

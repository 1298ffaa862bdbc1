"""What a pause costs: the same work timed back to back and after the process sat idle.

The other benchmarks time one call after another, which keeps every page they touch warm. A person
pauses between messages. On this project's VM (a Firecracker microVM) memory left untouched for a
fraction of a second is slow to touch again, more so the longer the pause. Per idle gap (sleep
before each call), medians of --repeats calls of:
  array 4k / 2m: sum a 12 MB numpy array in 4 KiB pages / in 2 MiB pages (madvise(MADV_HUGEPAGE),
                 Linux only): the machine alone, no app code;
  signals:       Router.signals (one MiniLM encode + the heads) on a new message each time;
  demo prefill:  a 24-token prefill on the demo base (llama.cpp, the app's threads);
  qwen prefill:  the same on a Qwen2.5-0.5B-shaped base in Q8_0 (--qwen; writes a 640 MB file).

    .venv/bin/python benchmarks/idle.py [--gaps 0 0.1 0.5 2 5] [--repeats 5] [--qwen]

The last line is JSON: per measurement, {gap seconds: median ms}, and "slowdown_after_2s" (the
2 s figure over the back-to-back one) where 2 s is among the gaps.
"""

from __future__ import annotations

import argparse
import json
import mmap
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.router import DATA, MODELS  # noqa: E402
from models.demo import DemoSpec, write_model  # noqa: E402
from models.engine import Engine, default_threads  # noqa: E402
from router.decision import Thresholds  # noqa: E402
from router.embeddings import Embedder  # noqa: E402
from router.evaluate import read_jsonl  # noqa: E402
from router.perplexity import Perplexity  # noqa: E402
from router.router import Router  # noqa: E402


def array(huge: bool):
    """A 12 MB float64 array, in 2 MiB pages if huge (where the kernel gives them)."""
    buffer = mmap.mmap(-1, 12 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge:
        buffer.madvise(mmap.MADV_HUGEPAGE)
    values = np.frombuffer(buffer, dtype=np.float64)
    values[:] = 1.0
    return values.sum


def prefill(engine: Engine):
    tokens = engine.tokenize("the quick brown fox jumps over the lazy dog " * 4)[:24]

    def run() -> None:
        llama_cpp.llama_memory_seq_rm(engine.ctx.memory, 0, -1, -1)
        engine._decode(tokens, 0, 0)
    return run


def timed_after(gap: float, call) -> float:
    time.sleep(gap)
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gaps", type=float, nargs="+", default=[0, 0.1, 0.5, 2, 5], help="idle seconds before each call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--qwen", action="store_true", help="also a Qwen2.5-0.5B-shaped base (writes a 640 MB file)")
    args = parser.parse_args()

    router = Router(Perplexity(lambda *a, **k: (0.0, 0)), Thresholds(), Embedder(threads=1))
    texts = iter(row["text"] for row in read_jsonl(DATA / "domain.jsonl", ("text", "label")))
    calls = {"array 4k": array(False), "array 2m": array(True),
             "signals": lambda: router.signals(next(texts), None, None)}
    with tempfile.TemporaryDirectory(prefix="cogumi-idle-") as tmp:
        shapes = {"demo prefill": DemoSpec()}
        if args.qwen:
            shapes["qwen prefill"] = MODELS["qwen0.5b-shape"][0]
        engines = []
        for name, spec in shapes.items():
            path = Path(tmp) / f"{name.split()[0]}.gguf"
            write_model(path, spec, "base")
            engines.append(Engine(path, n_ctx=512, n_threads=default_threads()))
            calls[name] = prefill(engines[-1])

        results: dict[str, dict[float, float]] = {name: {} for name in calls}
        for name, call in calls.items():
            for _ in range(3):
                call()  # warm-up: allocations, first-call work
            for gap in args.gaps:
                results[name][gap] = statistics.median(timed_after(gap, call) for _ in range(args.repeats))

    print(f"median ms of {args.repeats} calls, each after sleeping the gap")
    print(f"{'':<16}" + "".join(f"{f'{gap:g} s':>10}" for gap in args.gaps))
    for name, row in results.items():
        print(f"{name:<16}" + "".join(f"{row[gap]:>10.2f}" for gap in args.gaps))
    summary = {name: {f"{gap:g}": round(ms, 2) for gap, ms in row.items()} for name, row in results.items()}
    if 2 in args.gaps and 0 in args.gaps:
        summary["slowdown_after_2s"] = {name: round(row[2] / row[0], 2) for name, row in results.items()}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

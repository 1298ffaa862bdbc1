"""What the perplexity's logits cost per message token, by model shape.

An unrouted prefill runs the output layer (n_vocab × n_embd) on the prompt's last row only; scoring
the perplexity runs it on every message row. Per shape (the widths of Qwen2.5-0.5B, 1.5B and 7B,
151,936 or 152,064 tokens, Q8_0, random weights), two models of 2 and 4 layers are written, and a
--rows-token prefill is timed on each with logits on the last row only and on every row (medians
of --repeats alternating runs, the app's llama.cpp threads). Their difference is the output layer
per row; the 4- and 2-layer difference gives one layer per row, so a whole model's row (its real
layer count) can be priced without writing a 7B.

    .venv/bin/python benchmarks/output_layer.py [--rows 48] [--repeats 7] [--shapes 0.5b 1.5b 7b]

The 7B shape writes 1.7 and 2.2 GB files (about 4 minutes in all). The last line is JSON: per
shape, layer_ms and output_ms per row, and output_share: output layer / whole model's row, the
least a message row's scoring adds to its prefill.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

import llama_cpp  # noqa: E402

from models.demo import DemoSpec, write_model  # noqa: E402
from models.engine import Engine, default_threads  # noqa: E402

# name → (n_embd, n_ff, n_head, n_head_kv, vocabulary, the real model's layers)
SHAPES = {"0.5b": (896, 4864, 14, 2, 151_936, 24), "1.5b": (1536, 8960, 12, 2, 151_936, 28),
          "7b": (3584, 18944, 28, 4, 152_064, 28)}


def prefill_ms(engine: Engine, tokens: list[int], every_row: bool) -> float:
    llama_cpp.llama_memory_seq_rm(engine.ctx.memory, 0, -1, -1)
    start = time.perf_counter()
    engine._decode(tokens, 0, 0, outputs=range(len(tokens)) if every_row else None)
    return (time.perf_counter() - start) * 1000


def time_model(path: Path, rows: int, repeats: int) -> tuple[float, float]:
    """Median ms of a `rows`-token prefill: (logits on the last row, logits on every row)."""
    engine = Engine(path, n_ctx=max(512, rows + 16), n_threads=default_threads())
    tokens = (engine.tokenize("the quick brown fox jumps over the lazy dog " * 20) * 4)[:rows]
    for _ in range(2):
        prefill_ms(engine, tokens, False), prefill_ms(engine, tokens, True)
    last, every = [], []
    for _ in range(repeats):
        last.append(prefill_ms(engine, tokens, False))
        every.append(prefill_ms(engine, tokens, True))
    return statistics.median(last), statistics.median(every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="cogumi-output-layer-") as tmp:
        for name in args.shapes:
            n_embd, n_ff, n_head, n_head_kv, vocab, layers = SHAPES[name]
            timed = {}
            for n in (2, 4):
                spec = replace(DemoSpec(), n_embd=n_embd, n_ff=n_ff, n_head=n_head, n_head_kv=n_head_kv,
                               draft_layers=2, extra_layers=n - 2, min_vocab=vocab, weight_type="q8_0")
                path = Path(tmp) / f"{name}-{n}.gguf"
                write_model(path, spec, "base")
                timed[n] = time_model(path, args.rows, args.repeats)
                path.unlink()
            layer = (timed[4][0] - timed[2][0]) / 2 / args.rows
            output = statistics.mean(timed[n][1] - timed[n][0] for n in timed) / args.rows
            rest = max(0.0, timed[2][0] / args.rows - 2 * layer)  # embedding lookup, final norm, last row's logits
            row = layers * layer + rest
            results[name] = {"layers": layers, "layer_ms": layer, "output_ms": output, "row_ms": row,
                             "output_share": output / row}
    print(f"per prompt row, {args.rows}-token prefills, {default_threads()} llama.cpp thread(s), Q8_0")
    print(f"{'shape':<8}{'one layer ms':>14}{'output layer ms':>17}{'whole row ms':>14}{'output share':>14}")
    for name, r in results.items():
        print(f"{name:<8}{r['layer_ms']:>14.2f}{r['output_ms']:>17.2f}{r['row_ms']:>11.1f} ({r['layers']})"
              f"{r['output_share']:>11.3f}")
    print(json.dumps({name: {k: round(v, 3) for k, v in r.items()} for name, r in results.items()}))


if __name__ == "__main__":
    main()

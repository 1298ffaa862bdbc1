"""Speculative decoding: tokens/s against plain decoding, per draft length, and what the draft costs in memory.

Three demo base/draft pairs (n_embd 768, n_ff 2112, a 2-layer draft, a 16-layer base: the draft is
the base's first layers, see models/demo.py), written to a temp folder:
  full       extra_scale 0.0: the base computes exactly what the draft does (every draft kept)
  moderate   extra_scale --moderate-scale (0.1: roughly 70% of drafted tokens kept)
  disagree   the draft built with another seed: other weights, same vocabulary (~0% kept)
Per pair, one Engine(base, draft=draft); greedy, a fixed prompt, --max-tokens. Configurations:
plain (use_draft=False), fixed draft lengths 1 2 4 8 16, adaptive (draft_length=None). One warm-up
of each, then --repeats rounds running every configuration once (drift hits all alike); medians of
GenerationStats.tokens_per_s (decode tok/s after the first token; the prompt is the KV cache's
each time, for plain and speculative alike). DraftLength is wrapped (not changed) to record each
step: tokens drafted (the draft stops early below its confidence floor, so "mean k" can be < the
length), kept, and the draft and verify seconds. accept = kept / drafted; alpha = the per-token
acceptance of the geometric model, kept / (kept + steps with a miss); Leviathan et al.'s expected
speedup (1 - a^(g+1)) / ((1 - a)(g c + 1)) uses alpha, g = mean k (the length actually drafted) and
c = base decode s/token / draft decode s/token, each alone as Engine(path) with use_draft=False.
That formula assumes verifying g+1 tokens costs one base token; "verify ms" shows what it costs.
Memory (measured first, see peak_rss_kb): a --min-vocab vocabulary pair at n_ctx --mem-ctx; with and
without the draft, each in a fresh process that loads the Engine and generates --mem-tokens tokens;
ru_maxrss. Bound: draft GGUF + draft F16 KV (n_ctx x draft layers x 2 x n_embd_kv x 2 bytes) + 64 MB.
Catch-up (the moderate pair): --catch-up-chats chats of ~1,600 tokens the draft has not seen (a
reopened chat, another visitor's): between the first token and the second the draft decodes the whole
prompt. The time between them with the draft's prompt batches on the engine's threads (as before
2026-12-02) and on its batch threads (now), alternating, a new chat each time; medians.

    .venv/bin/python benchmarks/speculative.py [--max-tokens 256] [--repeats 3] [--threads N]
                                               [--moderate-scale 0.1] [--mem-ctx 8192] [--catch-up-chats 8]

The last line printed is a JSON object: full_adaptive_x and disagree_adaptive_x (adaptive tok/s /
plain), moderate_adaptive_vs_best (adaptive / the best fixed length), draft_extra_rss_mb,
draft_bound_mb, catch_up_second_token_ms (engine threads, batch threads) and catch_up_ratio (batch
threads / engine threads), and per-pair figures under "pairs". Goals (reported, not asserted): >= 2.5,
>= 0.95, >= 0.95, and the extra RSS within the bound.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere

import models.engine  # noqa: E402
from models.demo import DemoSpec, write_model  # noqa: E402
from models.engine import Engine  # noqa: E402
from models.speculative import DraftLength, expected_speedup  # noqa: E402

LENGTHS = (1, 2, 4, 8, 16)
STEPS: list[tuple[int, int, float, float]] = []  # (drafted, kept, draft s, verify s) per step of the current run


class RecordingDraftLength(DraftLength):
    def update(self, drafted: int, accepted: int, draft_s: float, verify_s: float) -> None:
        STEPS.append((drafted, accepted, draft_s, verify_s))
        super().update(drafted, accepted, draft_s, verify_s)


models.engine.DraftLength = RecordingDraftLength  # the engine looks the name up in its module

MEMORY_CHILD = """
import resource, sys
sys.path.insert(0, sys.argv[1])
from models.engine import Engine
e = Engine(sys.argv[2], n_ctx=int(sys.argv[4]), draft=sys.argv[3] or None)
for _ in e.generate([{"role": "user", "content": "Tell me a story."}], max_tokens=int(sys.argv[5]), temperature=0):
    pass
status = open("/proc/self/status").read()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, status.split("VmHWM:")[1].split()[0])
"""


def run(engine: Engine, messages: list[dict], max_tokens: int, **kw) -> dict:
    STEPS.clear()
    out = list(engine.generate(messages, max_tokens=max_tokens, temperature=0, **kw))
    s, steps = out[-1], list(STEPS)
    drafting = [st for st in steps if st[0]]
    kept, misses = sum(st[1] for st in steps), sum(st[1] < st[0] for st in steps)
    return {"text": "".join(out[:-1]), "tokens": s.tokens, "tok_s": s.tokens_per_s, "accept": s.draft_acceptance,
            "alpha": kept / (kept + misses) if kept + misses else 0.0,
            "mean_k": statistics.mean(st[0] for st in drafting) if drafting else 0.0,
            "draft_ms": 1000 * statistics.mean(st[2] for st in drafting) if drafting else 0.0,
            "verify_ms": 1000 * statistics.mean(st[3] for st in steps) if steps else 0.0}


def alone_tok_s(path: Path, messages: list[dict], args: argparse.Namespace) -> float:
    engine = Engine(path, n_ctx=2048, n_threads=args.threads)  # a warm-up, then the median of --repeats
    return statistics.median([run(engine, messages, args.max_tokens)["tok_s"] for _ in range(args.repeats + 1)][1:])


def bench_pair(base: Path, draft: Path, args: argparse.Namespace) -> dict:
    messages = [{"role": "user", "content": args.message}]
    c = alone_tok_s(base, messages, args) / alone_tok_s(draft, messages, args)
    engine = Engine(base, n_ctx=2048, n_threads=args.threads, draft=draft)
    configs = {"plain": {"use_draft": False}, **{f"fixed {n}": {"draft_length": n} for n in LENGTHS},
               "adaptive": {"draft_length": None}}
    for kw in configs.values():  # warm-up (the draft's own context takes the prompt here)
        run(engine, messages, args.max_tokens, **kw)
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, kw in configs.items():
            runs[name].append(run(engine, messages, args.max_tokens, **kw))
    rows = {}
    for name, rs in runs.items():
        row = {k: statistics.median(r[k] for r in rs) for k in ("tok_s", "accept", "alpha", "mean_k", "draft_ms", "verify_ms")}
        row["tokens"] = rs[0]["tokens"]
        row["same_as_plain"] = all(r["text"] == runs["plain"][0]["text"] and r["tokens"] == row["tokens"] for r in rs)
        row["expected_x"] = expected_speedup(row["alpha"], row["mean_k"], c) if name != "plain" else 1.0
        rows[name] = row
    for row in rows.values():
        row["x_plain"] = row["tok_s"] / rows["plain"]["tok_s"]
    return {"c": c, "rows": rows}


def long_chat(i: int) -> list[dict]:
    """Six turns of made-up words, ~1,600 tokens, different for each i."""
    words = "the quick brown fox jumps over a lazy dog then runs into the forest to find some food".split()
    turns = []
    for t in range(6):
        turns += [{"role": "user", "content": f"question {i}-{t}: " + " ".join(words[(i + t + k) % len(words)] for k in range(40))},
                  {"role": "assistant", "content": " ".join(words[(3 * i + t + k) % len(words)] for k in range(60))}]
    return [{"role": "system", "content": "You are Cogumi."}, *turns, {"role": "user", "content": f"and now {i}?"}]


def bench_catch_up(base: Path, draft: Path, args: argparse.Namespace) -> dict[int, float] | None:
    """Median ms from the first token to the second per thread count of the draft's prompt batches
    (module docstring); None where the engine's batch threads are its threads (one core, a GPU)."""
    engine = Engine(base, n_ctx=4096, n_threads=args.threads, draft=draft)
    if engine.batch_threads == engine.n_threads:
        return None
    gaps: dict[int, list[float]] = {engine.n_threads: [], engine.batch_threads: []}
    for i in range(2 * args.catch_up_chats + 2):  # the first two are a warm-up
        threads = list(gaps)[i % 2]
        engine.draft.batch_threads = threads
        times = [time.perf_counter() for piece in engine.generate(long_chat(i), max_tokens=2, temperature=0,
                                                                  draft_length=4) if isinstance(piece, str)]
        if i >= 2 and len(times) == 2:
            gaps[threads].append((times[1] - times[0]) * 1000)
    return {threads: statistics.median(g) for threads, g in gaps.items()}


def peak_rss_kb(base: Path, draft: Path | None, args: argparse.Namespace) -> tuple[int, int]:
    """(ru_maxrss, VmHWM) in kB of a fresh process. ru_maxrss survives exec: a child started by a parent
    that had held more (the engines below) reports the parent's peak, so this runs before them."""
    cmd = [sys.executable, "-c", MEMORY_CHILD, str(ROOT), str(base), str(draft or ""), str(args.mem_ctx),
           str(args.mem_tokens)]
    maxrss, hwm = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()[-2:]
    return int(maxrss), int(hwm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=256, help="reply length cap (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per pair (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the engine's)")
    parser.add_argument("--moderate-scale", type=float, default=0.1, help="extra_scale of the moderate pair")
    parser.add_argument("--disagree-seed", type=int, default=7, help="seed of the disagreeing draft")
    parser.add_argument("--min-vocab", type=int, default=32768, help="vocabulary of the memory pair")
    parser.add_argument("--mem-ctx", type=int, default=8192, help="n_ctx of the memory pair")
    parser.add_argument("--mem-tokens", type=int, default=64, help="tokens generated in the memory runs")
    parser.add_argument("--catch-up-chats", type=int, default=8, help="chats per thread count (default 8)")
    parser.add_argument("--message", default="Write a short story about a model router that learns to plan.")
    args = parser.parse_args()
    load, cores = os.getloadavg()[0], os.cpu_count() or 1

    spec = DemoSpec(n_embd=768, n_ff=2112, n_head=12, n_head_kv=4, draft_layers=2, extra_layers=14)
    pairs = {"full": (replace(spec, extra_scale=0.0), replace(spec, extra_scale=0.0)),
             "moderate": (replace(spec, extra_scale=args.moderate_scale),) * 2,
             "disagree": (replace(spec, extra_scale=0.0), replace(spec, extra_scale=0.0, seed=args.disagree_seed))}
    mem_spec = replace(spec, min_vocab=args.min_vocab, context_length=max(spec.context_length, args.mem_ctx))
    results = {}
    with tempfile.TemporaryDirectory(prefix="cogumi-bench-") as tmp:
        tmp = Path(tmp)
        for role in ("base", "draft"):
            write_model(tmp / f"mem-{role}.gguf", mem_spec, role)
        (without, hwm_without), (with_draft, hwm_with) = (peak_rss_kb(tmp / "mem-base.gguf", d, args)
                                                          for d in (None, tmp / "mem-draft.gguf"))
        draft_file_mb = (tmp / "mem-draft.gguf").stat().st_size / 2**20
        for name, (base_spec, draft_spec) in pairs.items():
            for role, role_spec in (("base", base_spec), ("draft", draft_spec)):
                write_model(tmp / f"{name}-{role}.gguf", role_spec, role)
            results[name] = bench_pair(tmp / f"{name}-base.gguf", tmp / f"{name}-draft.gguf", args)
        catch_up = bench_catch_up(tmp / "moderate-base.gguf", tmp / "moderate-draft.gguf", args)
    load_end = os.getloadavg()[0]
    draft_kv_mb = args.mem_ctx * spec.draft_layers * 2 * (spec.n_embd // spec.n_head * spec.n_head_kv) * 2 / 2**20
    extra_mb, bound_mb = (with_draft - without) / 1024, draft_file_mb + draft_kv_mb + 64

    print(f"Speculative decoding, demo pairs n_embd {spec.n_embd}, n_ff {spec.n_ff}, {spec.draft_layers}-layer draft, "
          f"{spec.draft_layers + spec.extra_layers}-layer base; greedy, max_tokens {args.max_tokens}, "
          f"{args.threads or models.engine.default_threads()} thread(s), medians of {args.repeats}")
    print(f"1-min load average: {load:.2f} at start, {load_end:.2f} at end ({cores} cores)")
    if load >= cores / 2:  # at the start: at the end it includes this benchmark's own thread(s)
        print("NOTE: the load is high (another process is using the CPU): timings are noisy and slower than an idle machine's")
    head = (f"{'config':9s} {'tokens':>6s} {'tok/s':>7s} {'x plain':>7s} {'accept':>6s} {'alpha':>5s} {'mean k':>6s} "
            f"{'draft ms':>8s} {'verify ms':>9s} {'expected x':>10s}")
    for name, r in results.items():
        print(f"\n[{name}]  c = base s/token / draft s/token = {r['c']:.3f}\n{head}")
        for cfg, row in r["rows"].items():
            print(f"{cfg:9s} {row['tokens']:6d} {row['tok_s']:7.1f} {row['x_plain']:7.2f} {row['accept']:6.2f} "
                  f"{row['alpha']:5.2f} {row['mean_k']:6.2f} {row['draft_ms']:8.2f} {row['verify_ms']:9.2f} "
                  f"{row['expected_x']:10.2f}{'' if row['same_as_plain'] else '  (output differs from plain!)'}")
    fixed = {cfg: row["tok_s"] for cfg, row in results["moderate"]["rows"].items() if cfg.startswith("fixed")}
    best = max(fixed, key=fixed.get)
    summary = {"full_adaptive_x": results["full"]["rows"]["adaptive"]["x_plain"],
               "disagree_adaptive_x": results["disagree"]["rows"]["adaptive"]["x_plain"],
               "moderate_adaptive_vs_best": results["moderate"]["rows"]["adaptive"]["tok_s"] / fixed[best],
               "draft_extra_rss_mb": extra_mb, "draft_bound_mb": bound_mb}
    print(f"\nmemory ({args.min_vocab:,}-token vocabulary, n_ctx {args.mem_ctx}, {args.mem_tokens} tokens): peak RSS "
          f"{without / 1024:.1f} MB without the draft, {with_draft / 1024:.1f} MB with; extra {extra_mb:.1f} MB, "
          f"bound {bound_mb:.1f} MB (draft file {draft_file_mb:.1f} + draft KV {draft_kv_mb:.1f} + 64); VmHWM "
          f"{hwm_without / 1024:.1f} / {hwm_with / 1024:.1f} MB{'' if abs(with_draft - hwm_with) < 1024 else ' (differs: ru_maxrss inherited?)'}")
    if catch_up:
        (one, one_ms), (many, many_ms) = catch_up.items()
        summary["catch_up_ratio"] = many_ms / one_ms
        print(f"\ncatch-up (moderate pair, new ~1,600-token chats, "
              f"medians of {args.catch_up_chats}): first to second token {one_ms:.1f} ms with the draft's prompt "
              f"batches on {one} thread(s), {many_ms:.1f} ms on {many}: {summary['catch_up_ratio']:.2f}x")
    goals = [("full adaptive / plain", summary["full_adaptive_x"], ">=", 2.5),
             ("disagree adaptive / plain", summary["disagree_adaptive_x"], ">=", 0.95),
             (f"moderate adaptive / best fixed ({best})", summary["moderate_adaptive_vs_best"], ">=", 0.95),
             ("draft extra RSS MB", extra_mb, "<=", bound_mb)]
    for label, value, op, goal in goals:
        print(f"goal {label}: {value:.2f} {op} {goal:.2f}  {'met' if (value >= goal) == (op == '>=') else 'MISSED'}")
    figures = {name: {"c": round(r["c"], 4), **{cfg: {"tok_s": round(row["tok_s"], 1), "x_plain": round(row["x_plain"], 3),
                                                      "accept": round(row["accept"], 3), "tokens": row["tokens"]}
                                                for cfg, row in r["rows"].items()}} for name, r in results.items()}
    catch_up_ms = {f"{t}_threads": round(ms, 2) for t, ms in catch_up.items()} if catch_up else None
    print(json.dumps({**{k: round(v, 3) for k, v in summary.items()}, "catch_up_second_token_ms": catch_up_ms,
                      "load_avg": round(load, 2), "pairs": figures}))


if __name__ == "__main__":
    main()

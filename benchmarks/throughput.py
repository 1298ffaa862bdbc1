"""Streaming tokens/s through the app (ChatService) against llama-cpp-python called directly.

For each model (the demo base, and a wider one so per-token compute is not trivially small):
  app:    ChatService(Engine, Memory on a temp sessions.db).respond(new session, message), greedy
  direct: llama_cpp.Llama(...).create_completion(same prompt tokens, temperature=0, stream=True)
The prompt tokens are the ones the engine builds (engine.fit). tok/s is generated tokens over the
wall time of the whole call; TTFT is from the call to the first streamed text; decode tok/s is
(tokens - 1) over the time after the first token. Both paths reuse the cached prompt between runs
(the same prompt each time), so TTFT is mostly one token. One warm-up, then the median of
--repeats runs, alternating which path goes first. The engine's context takes llama.cpp's default
flash-attention setting (auto: on for CPU) while Llama() turns it off, so the direct path is given
flash_attn=True: otherwise the arithmetic differs and long greedy replies drift apart.

    .venv/bin/python benchmarks/throughput.py [--max-tokens 256] [--repeats 5] [--threads 2]
                                              [--no-direct-flash-attn]

The last line printed is a JSON object: app_vs_direct (median app tok/s / median direct tok/s,
for the demo base) and per-model figures under "models".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

import llama_cpp  # noqa: E402

from app.chat import ChatService, ChatSettings  # noqa: E402
from app.memory import Memory  # noqa: E402
from models.demo import DemoSpec, write_model  # noqa: E402
from models.engine import Engine  # noqa: E402

MODELS = {"demo": DemoSpec(), "demo-768": replace(DemoSpec(), n_embd=768, n_ff=2048)}


def run_app(service: ChatService, message: str) -> dict:
    session = service.new_session()  # a fresh session: no history, the same prompt every time
    start, first, last = time.perf_counter(), None, None
    for update in service.respond(session, message):
        if first is None and update.text:
            first = time.perf_counter()
        last = update
    total = time.perf_counter() - start
    return {"tokens": last.stats.tokens, "ttft": (first or start + total) - start, "total": total, "text": last.text}


def run_direct(llm: llama_cpp.Llama, prompt: list[int], max_tokens: int) -> dict:
    start, first, pieces, finish = time.perf_counter(), None, [], None
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0, stream=True):
        choice = chunk["choices"][0]
        if first is None and choice["text"]:
            first = time.perf_counter()
        pieces.append(choice["text"])
        finish = choice["finish_reason"] or finish
    total = time.perf_counter() - start
    # Every generated token is evaluated except the last one when the reply hits max_tokens.
    tokens = llm.n_tokens - len(prompt) + (finish == "length")
    return {"tokens": tokens, "ttft": (first or start + total) - start, "total": total, "text": "".join(pieces).lstrip()}


def summarise(runs: list[dict]) -> dict:
    med = lambda key: statistics.median(key(r) for r in runs)
    return {"tokens": runs[0]["tokens"], "tok_s": med(lambda r: r["tokens"] / r["total"]),
            "ttft_ms": med(lambda r: r["ttft"] * 1000),
            "decode_tok_s": med(lambda r: (r["tokens"] - 1) / (r["total"] - r["ttft"]) if r["tokens"] > 1 else 0.0),
            "same_every_run": len({(r["tokens"], r["text"]) for r in runs}) == 1}


def bench_model(path: Path, tmp: Path, args: argparse.Namespace) -> tuple[dict, dict, int]:
    engine = Engine(path, n_ctx=2048, n_threads=args.threads)
    memory = Memory(tmp / f"sessions-{path.stem}.db")
    settings = ChatSettings(temperature=0, max_tokens=args.max_tokens, seed=0)
    service = ChatService(engine, memory, settings)
    messages = [{"role": "system", "content": settings.system_prompt}, {"role": "user", "content": args.message}]
    prompt = engine.fit(messages, args.max_tokens)[0]  # exactly what respond() sends to the engine
    llm = llama_cpp.Llama(str(path), n_ctx=2048, n_batch=512, n_threads=args.threads,
                          n_threads_batch=args.threads, flash_attn=args.direct_flash_attn, verbose=False)
    paths = {"app": lambda: run_app(service, args.message), "direct": lambda: run_direct(llm, prompt, args.max_tokens)}
    for run in paths.values():  # warm-up
        run()
    runs: dict[str, list[dict]] = {"app": [], "direct": []}
    for i in range(args.repeats):
        for name in (["app", "direct"] if i % 2 == 0 else ["direct", "app"]):
            runs[name].append(paths[name]())
    if runs["app"][0]["text"] != runs["direct"][0]["text"]:
        print(f"WARNING: {path.stem}: the app and direct replies differ (greedy should make them equal)")
    llm.close()
    memory.db.conn.close()
    return summarise(runs["app"]), summarise(runs["direct"]), len(prompt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=256, help="reply length cap (default 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per path (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads, both paths (default 2)")
    parser.add_argument("--direct-flash-attn", action=argparse.BooleanOptionalAction, default=True,
                        help="flash attention for the direct path (default on, as the engine's context)")
    parser.add_argument("--message", default="Write a short story about a model router that learns to plan.")
    args = parser.parse_args()
    load = os.getloadavg()[0]

    results = {}
    with tempfile.TemporaryDirectory(prefix="cogumi-bench-") as tmp:
        tmp = Path(tmp)
        for name, spec in MODELS.items():
            path = tmp / f"{name}.gguf"
            write_model(path, spec, "base")
            app, direct, n_prompt = bench_model(path, tmp, args)
            results[name] = {"app": app, "direct": direct, "prompt_tokens": n_prompt,
                             "gguf_mb": path.stat().st_size / 1e6, "spec": spec}

    print(f"{'model':9s} {'GGUF MB':>7s} {'path':6s} {'tokens':>6s} {'TTFT ms':>8s} {'tok/s':>8s} {'decode tok/s':>12s}  "
          f"({args.repeats} runs, medians; max_tokens {args.max_tokens}, {args.threads} threads; "
          f"1-min load average at start {load:.2f})")
    for name, r in results.items():
        for path in ("app", "direct"):
            s = r[path]
            print(f"{name:9s} {r['gguf_mb']:7.1f} {path:6s} {s['tokens']:6d} {s['ttft_ms']:8.2f} {s['tok_s']:8.1f} "
                  f"{s['decode_tok_s']:12.1f}{'' if s['same_every_run'] else '  (runs differ!)'}")
        spec = r["spec"]
        print(f"{'':9s} app/direct tok/s {r['app']['tok_s'] / r['direct']['tok_s']:.3f}  (n_embd {spec.n_embd}, "
              f"n_ff {spec.n_ff}, {spec.draft_layers + spec.extra_layers} layers, prompt {r['prompt_tokens']} tokens)")
        if r["app"]["tokens"] != r["direct"]["tokens"]:
            print(f"WARNING: {name}: token counts differ: app {r['app']['tokens']}, direct {r['direct']['tokens']}")
    figures = {name: {"app_tok_s": round(r["app"]["tok_s"], 1), "direct_tok_s": round(r["direct"]["tok_s"], 1),
                      "app_vs_direct": round(r["app"]["tok_s"] / r["direct"]["tok_s"], 3),
                      "app_ttft_ms": round(r["app"]["ttft_ms"], 2), "direct_ttft_ms": round(r["direct"]["ttft_ms"], 2),
                      "app_tokens": r["app"]["tokens"], "direct_tokens": r["direct"]["tokens"]}
               for name, r in results.items()}
    print(json.dumps({"app_vs_direct": figures["demo"]["app_vs_direct"], "models": figures}))


if __name__ == "__main__":
    main()

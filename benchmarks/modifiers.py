"""What a LoRA modifier costs: switching to it mid-conversation, each token with it active, memory.

On a demo base wide enough that prefill is not noise (n_embd 768, n_ff 2048, 6 layers) with the
three demo adapters (scale 1.0), one Engine; a conversation of system + user/assistant turns
(--prompt-tokens, counted with engine.fit) and a next user message. Scenario: the first half of the
conversation was answered on "code" (its KV sequence holds that half), the rest ran on the base;
the next message goes to "code". Each case puts the routes' caches in its state, then times
generate(max_tokens=1, greedy); TTFT is GenerationStats.ttft_ms. Every repeat re-creates the same state.
  no_switch       base route, which has everything but the new message cached
  switch          "code" route, base active before: re-evaluates the unseen half (+ new message)
  code_same       "code" route, "code" already active: the same unseen tokens, no adapter switch
  unseen_prefill  base route holding the first half only: the same unseen tokens, plain base
  full_reprefill  "code" route with nothing cached (an app without per-adapter KV), base active before
  switch_1tok / same_1tok: next_token_logits re-evaluating one cached token, right after another
                  route was active vs the same route (4 of each per repeat): isolates the switch itself
                  (llama.cpp re-reserves its compute graphs at the first decode after a set_adapters_lora)
Per-token cost: decode tok/s (GenerationStats.tokens_per_s, greedy, --max-tokens), plain base vs
"code" active, same prompt, order base code code base twice per repeat (drift cancels). Memory: the
F16 KV cache of one route, n_ctx x layers x 2 (K, V) x n_embd_kv x 2 bytes, from the spec.

    .venv/bin/python benchmarks/modifiers.py [--repeats 5] [--threads N] [--prompt-tokens 1000]
                                             [--max-tokens 128]

The last line printed is a JSON object: switch_ttft_vs_unseen_prefill, adapter_token_cost_x,
switch_vs_full_reprefill, the medians in ms, and kv_mb_per_route.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from models.demo import MODIFIERS, WORDS, DemoSpec, write_lora, write_model  # noqa: E402
from models.engine import Engine, default_threads  # noqa: E402

SPEC = replace(DemoSpec(), n_embd=768, n_ff=2048)
N_CTX = 2048


def text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "."


def conversation(engine: Engine, target: int, max_tokens: int) -> tuple[list[dict], list[dict]]:
    """(history ending with an assistant reply, history + the next user message) of about `target` tokens."""
    rng = random.Random(7)
    history = [{"role": "system", "content": "You are a helpful assistant. " + text(rng, 20)}]
    while True:
        history += [{"role": "user", "content": text(rng, 40)}, {"role": "assistant", "content": text(rng, 80)}]
        nxt = history + [{"role": "user", "content": text(random.Random(8), 40)}]
        if len(engine.fit(nxt, max_tokens)[0]) >= target:
            return history, nxt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (default 5)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help=f"llama.cpp threads (default: the engine's, {default_threads()} here)")
    parser.add_argument("--prompt-tokens", type=int, default=1000, help="conversation length (default 1000)")
    parser.add_argument("--max-tokens", type=int, default=128, help="reply length for the tok/s runs (default 128)")
    args = parser.parse_args()
    load = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="cogumi-bench-") as tmp:
        write_model(base := Path(tmp) / "base.gguf", SPEC, "base")
        for name in MODIFIERS:
            write_lora(Path(tmp) / f"{name}.gguf", SPEC, name)
        engine = Engine(base, n_ctx=N_CTX, n_threads=args.threads,
                        modifiers={m: (Path(tmp) / f"{m}.gguf", 1.0) for m in MODIFIERS})
        history, nxt = conversation(engine, args.prompt_tokens, args.max_tokens)
        prompt = engine.fit(nxt, args.max_tokens)[0]
        # Token lengths of the history and of its first half, cut after a reply (what "code" answered).
        sizes = [len(engine.chat.message(m["role"], m["content"])) for m in history]
        ends = [sum(sizes[:i + 1]) for i in range(len(history))]
        n_hist = ends[-1]
        n_half = min((ends[i] for i in range(2, len(history), 2)), key=lambda e: abs(e - n_hist / 2))
        other = engine.tokenize("hello there", False)  # shares no prefix with the prompt

        def put(route: str | None, tokens: list[int]) -> None:  # route's cache := tokens; route active
            engine.next_token_logits(tokens, route)

        setups = {
            "no_switch": (lambda: (put("code", prompt[:n_half]), put(None, prompt[:n_hist])), None),
            "switch": (lambda: (put("code", prompt[:n_half]), put(None, prompt[:n_hist])), "code"),
            "code_same": (lambda: (put(None, prompt[:n_hist]), put("code", prompt[:n_half])), "code"),
            "unseen_prefill": (lambda: (put("code", prompt[:n_half]), put(None, prompt[:n_half])), None),
            "full_reprefill": (lambda: (put("code", other), put(None, prompt[:n_hist])), "code"),
        }
        times: dict[str, list[float]] = {k: [] for k in [*setups, "switch_1tok", "same_1tok", "base_tok_s", "code_tok_s"]}
        unseen: dict[str, set[int]] = {k: set() for k in setups}
        replies: set[int] = set()  # reply lengths of the tok/s runs
        abba = (("base_tok_s", None), ("code_tok_s", "code"), ("code_tok_s", "code"), ("base_tok_s", None))
        for i in range(args.repeats + 1):  # the first round is a warm-up
            for name, (setup, route) in list(setups.items())[:: 1 if i % 2 else -1]:
                setup()
                stats = list(engine.generate(nxt, max_tokens=1, temperature=0, modifier=route))[-1]
                if i:
                    times[name].append(stats.ttft_ms)
                    unseen[name].add(stats.prompt_tokens - stats.reused_tokens)
            for name, before in (("switch_1tok", "code"), ("same_1tok", None)) * 4:
                put(None, prompt[:n_hist])
                put(before, prompt[:n_half] if before else prompt[:n_hist])
                start = time.perf_counter()
                put(None, prompt[:n_hist])  # re-evaluates the last token only
                if i:
                    times[name].append((time.perf_counter() - start) * 1000)
            for name, route in abba * 2:
                stats = list(engine.generate(nxt, max_tokens=args.max_tokens, temperature=0, modifier=route))[-1]
                if i:
                    times[name].append(stats.tokens_per_s)
                    replies.add(stats.tokens)

    med = {k: statistics.median(v) for k, v in times.items()}
    n_kv = SPEC.n_embd // SPEC.n_head * SPEC.n_head_kv  # x2 for K and V, x2 bytes for F16
    kv_mb = N_CTX * (SPEC.draft_layers + SPEC.extra_layers) * 2 * n_kv * 2 / 2**20
    routes = 1 + len(engine.modifiers.names)

    print(f"modifier costs  ({args.repeats} repeats, medians; n_embd {SPEC.n_embd}, n_ff {SPEC.n_ff}, "
          f"{SPEC.draft_layers + SPEC.extra_layers} layers, LoRA rank {SPEC.lora_rank}; {args.threads} threads; "
          f"1-min load average at start {load:.2f})")
    print(f"conversation: {len(history)} messages + the next one = {len(prompt)} prompt tokens; "
          f"'code' holds the first {n_half}, the base the first {n_hist}")
    print(f"{'case':16s} {'route':5s} {'unseen tok':>10s} {'TTFT ms':>9s} {'min':>9s} {'max':>9s}")
    for name, (_, route) in setups.items():
        v = times[name]
        print(f"{name:16s} {route or 'base':5s} {'/'.join(map(str, sorted(unseen[name]))):>10s} "
              f"{med[name]:9.1f} {min(v):9.1f} {max(v):9.1f}")
    for name, before in (("switch_1tok", "'code'"), ("same_1tok", "base")):
        print(f"{name:16s} {'base':5s} {1:>10d} {med[name]:9.1f} {min(times[name]):9.1f} {max(times[name]):9.1f}  "
              f"(next_token_logits, {before} active before)")
    print(f"switch TTFT / unseen prefill on base  {med['switch'] / med['unseen_prefill']:.3f}  (goal <= ~1.0)\n"
          f"  = adapter prefill (code_same / unseen_prefill) {med['code_same'] / med['unseen_prefill']:.3f}"
          f"  x  the switch itself (switch / code_same) {med['switch'] / med['code_same']:.3f}\n"
          f"  switch overhead alone (switch_1tok - same_1tok) {med['switch_1tok'] - med['same_1tok']:.1f} ms\n"
          f"switch TTFT / full re-prefill         {med['switch'] / med['full_reprefill']:.3f}")
    b, c = times["base_tok_s"], times["code_tok_s"]
    print(f"decode tok/s ({len(b)} runs each, replies of {sorted(replies)} tokens): base {med['base_tok_s']:.1f} "
          f"({min(b):.0f}-{max(b):.0f}), with 'code' {med['code_tok_s']:.1f} ({min(c):.0f}-{max(c):.0f})\n"
          f"  -> a token with the adapter costs {med['base_tok_s'] / med['code_tok_s']:.3f}x")
    print(f"KV cache (F16) per route: {kv_mb:.1f} MiB at n_ctx {N_CTX}; {routes} routes (base + "
          f"{routes - 1} modifiers): {kv_mb * routes:.1f} MiB")
    if not unseen["switch"] == unseen["code_same"] == unseen["unseen_prefill"] or max(map(len, unseen.values())) > 1:
        print("WARNING: switch, code_same and unseen_prefill did not all re-evaluate the same number of tokens")
    print(json.dumps({
        "switch_ttft_vs_unseen_prefill": round(med["switch"] / med["unseen_prefill"], 3),
        "adapter_token_cost_x": round(med["base_tok_s"] / med["code_tok_s"], 3),
        "switch_vs_full_reprefill": round(med["switch"] / med["full_reprefill"], 3),
        "switch_vs_code_same": round(med["switch"] / med["code_same"], 3),
        "adapter_prefill_cost_x": round(med["code_same"] / med["unseen_prefill"], 3),
        **{f"{k}_ms": round(med[k], 2) for k in [*setups, "switch_1tok", "same_1tok"]},
        "base_tok_s": round(med["base_tok_s"], 1), "code_tok_s": round(med["code_tok_s"], 1),
        "unseen_tokens": min(unseen["switch"]), "prompt_tokens": len(prompt),
        "kv_mb_per_route": round(kv_mb, 2), "kv_mb_total": round(kv_mb * routes, 2),
        "threads": args.threads, "load_1min": round(load, 2)}))


if __name__ == "__main__":
    main()

"""Router speed: the signals other than perplexity, and what routing adds to time to first token.

signals: Router.signals (one MiniLM encode of the message + the domain and escalation heads) on
  --n messages from router/data (domain texts alone, escalation texts after their previous answer),
  each text seen once so nothing comes from the embedding cache. The previous answer is embedded
  beforehand, as the app does when a reply ends (Router.remember). Threads as in the app: the
  cores llama.cpp does not use.
ttft: ChatService.respond on a new session, from the call to the first streamed text, greedy.
  routed:   with the Router, τp = τe = ∞ so every message takes the base route by the perplexity
            gate (all signals computed, the scoring prefill reused by the reply);
  unrouted: no Router, the reply on the base.
  Each message goes through both paths, in two passes that swap which messages each path gets, so
  neither path finds the other's prefill in the KV cache. Then the same as a follow-up: the second
  message of a session, after a first turn and its reply (so the escalation detector has an answer
  to read, and the KV cache holds the conversation). On the demo base, a 768-wide one and a
  Qwen2.5-0.5B-shaped one.

    .venv/bin/python benchmarks/router.py [--n 300] [--ttft-n 60] [--large]

The last line is JSON: signals_p50_ms, signals_p95_ms, ttft_base_route_vs_unrouted (median routed
TTFT / median unrouted TTFT on the demo base), and the per-model figures.
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

import numpy as np  # noqa: E402

from app.chat import ChatService, ChatSettings  # noqa: E402
from app.memory import Memory  # noqa: E402
from models.demo import DemoSpec, write_model  # noqa: E402
from models.engine import Engine  # noqa: E402
from router.decision import Thresholds  # noqa: E402
from router.embeddings import Embedder  # noqa: E402
from router.evaluate import read_jsonl  # noqa: E402
from router.perplexity import Perplexity  # noqa: E402
from router.router import Router  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "router" / "data"
# name → (shape, messages per path). Perplexity needs the output layer's logits on every message
# token, which an unrouted reply computes for the last token only; how much that costs depends on
# the vocabulary against the body, so the last model has Qwen2.5-0.5B's shape (896 wide, 24 layers,
# 151,936 tokens; random weights) in the real model sets' Q8_0. (In F16 llama.cpp's CPU output layer
# runs at a third of the body's speed per row: ratio 1.98 there against 1.47 in Q8_0, same day.)
MODELS = {"demo": (DemoSpec(), None), "demo-768": (replace(DemoSpec(), n_embd=768, n_ff=2048), None),
          "qwen0.5b-shape": (replace(DemoSpec(), n_embd=896, n_ff=4864, n_head=14, n_head_kv=2, extra_layers=22,
                                     min_vocab=151_936, weight_type="q8_0"), 16)}
# --large: the smallest real base (qwen2.5-1.5b profile: 1536 wide, 28 layers), in Q8_0 (the profile
# ships Q4_K_M, which the gguf package cannot write; both are quantized CPU kernels). A 1.8 GB file,
# ~2 s per first token on one thread, so 8 messages per path: about 4 minutes.
LARGE = {"qwen1.5b-shape": (replace(DemoSpec(), n_embd=1536, n_ff=8960, n_head=12, n_head_kv=2, extra_layers=26,
                                    min_vocab=151_936, weight_type="q8_0"), 8)}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def bench_signals(router: Router, n: int, seed: int) -> dict:
    rng = random.Random(seed)
    domain = rng.sample(read_jsonl(DATA / "domain.jsonl", ("text", "label")), n // 2)
    escalation = rng.sample(read_jsonl(DATA / "escalation.jsonl", ("previous_answer", "text", "label")), n - n // 2)
    for row in escalation:
        router.embedder.layers([row["previous_answer"]])  # what Router.remember does when a reply ends
    cases = [(r["text"], None) for r in domain] + [(r["text"], r["previous_answer"]) for r in escalation]
    rng.shuffle(cases)
    for text, previous in cases[:10]:  # warm-up (torch's first calls allocate)
        router.signals(text + " warm-up", previous, None)
    times = []
    for text, previous in cases:
        start = time.perf_counter()
        router.signals(text, previous, {"code": 0.25, "reasoning": 0.25, "automation": 0.25, "general": 0.25})
        times.append((time.perf_counter() - start) * 1000)
    chars = [len(t) for t, _ in cases]
    return {"n": len(times), "p50_ms": percentile(times, 50), "p95_ms": percentile(times, 95),
            "max_ms": max(times), "mean_chars": statistics.mean(chars)}


def first_text_ms(service: ChatService, message: str, session: str | None = None) -> float:
    start = time.perf_counter()
    stream = service.respond(session or service.new_session(), message, override="auto")
    for update in stream:
        if update.text:
            stream.close()
            return (time.perf_counter() - start) * 1000
    raise RuntimeError("no text streamed")


def follow_up_ms(service: ChatService, first: str, message: str) -> float:
    """The second message of a new session: its first turn (untimed) leaves a previous answer, so
    the escalation detector runs, and the conversation so far in the KV cache."""
    session = service.new_session()
    for _ in service.respond(session, first, override="auto"):
        pass
    if service.router:
        service.router.settle()  # the answer's embedding is made while the user reads and types
    return first_text_ms(service, message, session)


def bench_ttft(path: Path, router_parts: tuple, messages: list[str], tmp: Path, threads: int) -> dict:
    engine = Engine(path, n_ctx=2048, n_threads=threads)
    settings = ChatSettings(temperature=0, max_tokens=16, seed=0)
    embedder, domain, escalation = router_parts
    # τp = τe = ∞: every signal is computed and every message takes the base route
    router = Router(Perplexity(engine.score, max_tokens=settings.max_tokens),
                    Thresholds(tau_p=float("inf"), tau_e=float("inf"), calibrated=True), embedder, domain, escalation)
    routed = ChatService(engine, Memory(tmp / f"{path.stem}-routed.db"), settings, router=router)
    unrouted = ChatService(engine, Memory(tmp / f"{path.stem}-unrouted.db"), settings)
    for m in messages[:4]:  # warm-up
        first_text_ms(routed, m + " (warm-up)")
        first_text_ms(unrouted, m + " (warm-up 2)")
    half = len(messages) // 2
    a, b = messages[:half], messages[half:2 * half]
    times = {"routed": [], "unrouted": [], "routed_follow_up": [], "unrouted_follow_up": []}
    for first, second in ((a, b), (b, a)):  # each message through both paths, never back to back
        for i, (x, y) in enumerate(zip(first, second)):
            times["routed"].append(first_text_ms(routed, x))
            times["unrouted"].append(first_text_ms(unrouted, y))
            opener = second[i - 1]  # a follow-up after another message's reply
            times["routed_follow_up"].append(follow_up_ms(routed, opener, x))
            times["unrouted_follow_up"].append(follow_up_ms(unrouted, opener, y))
    decisions = routed.memory.db.execute("select count(*), sum(route = 'base') from decisions").fetchone()
    assert decisions[0] == decisions[1], "every routed message should have taken the base route"
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"routed_ms": med["routed"], "unrouted_ms": med["unrouted"], "ratio": med["routed"] / med["unrouted"],
            "routed_p95_ms": percentile(times["routed"], 95), "unrouted_p95_ms": percentile(times["unrouted"], 95),
            "follow_up_routed_ms": med["routed_follow_up"], "follow_up_unrouted_ms": med["unrouted_follow_up"],
            "follow_up_ratio": med["routed_follow_up"] / med["unrouted_follow_up"], "n": len(times["routed"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="messages for the signals timing (default 300)")
    parser.add_argument("--ttft-n", type=int, default=60, help="messages per path for TTFT (default 60)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: half the cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--large", action="store_true", help="also a Qwen2.5-1.5B-shaped base (~4 more minutes)")
    args = parser.parse_args()
    from models.engine import default_threads
    from router.domain import DomainClassifier
    from router.escalation import EscalationDetector

    llama_threads = args.threads or default_threads()
    torch_threads = max(1, (os.cpu_count() or 2) - llama_threads)
    parts = (Embedder(threads=torch_threads), DomainClassifier(), EscalationDetector())
    signal_router = Router(Perplexity(lambda *a, **k: (0.0, 0)), Thresholds(), *parts)
    signals = bench_signals(signal_router, args.n, args.seed)
    print(f"signals (encode + heads), {signals['n']} messages, mean {signals['mean_chars']:.0f} chars, "
          f"{torch_threads} torch thread(s): p50 {signals['p50_ms']:.2f} ms  p95 {signals['p95_ms']:.2f} ms  "
          f"max {signals['max_ms']:.2f} ms")

    rows = read_jsonl(DATA / "domain.jsonl", ("text", "label"))
    messages = [r["text"] for r in random.Random(args.seed + 1).sample(rows, 2 * (args.ttft_n // 2))]
    results = {}
    with tempfile.TemporaryDirectory(prefix="cogumi-bench-") as tmp:
        tmp = Path(tmp)
        for name, (spec, n) in (MODELS | LARGE if args.large else MODELS).items():
            path = tmp / f"{name}.gguf"
            write_model(path, spec, "base")
            results[name] = bench_ttft(path, parts, messages[:n], tmp, llama_threads)
            path.unlink()
    print(f"\nTTFT on the base route, medians ({llama_threads} llama thread(s)); first message of a new session, "
          f"then a follow-up (second message, after a reply)")
    print(f"{'model':<16}{'n':>4}{'unrouted ms':>13}{'routed ms':>11}{'ratio':>8}{'unrouted p95':>14}{'routed p95':>12}"
          f"{'follow-up: unrouted':>21}{'routed':>9}{'ratio':>8}")
    for name, r in results.items():
        print(f"{name:<16}{r['n']:>4}{r['unrouted_ms']:>13.2f}{r['routed_ms']:>11.2f}{r['ratio']:>8.3f}"
              f"{r['unrouted_p95_ms']:>14.2f}{r['routed_p95_ms']:>12.2f}{r['follow_up_unrouted_ms']:>21.2f}"
              f"{r['follow_up_routed_ms']:>9.2f}{r['follow_up_ratio']:>8.3f}")
    print(json.dumps({
        "signals_p50_ms": round(signals["p50_ms"], 2), "signals_p95_ms": round(signals["p95_ms"], 2),
        "ttft_base_route_vs_unrouted": round(results["demo"]["ratio"], 3),
        "ttft_base_route_vs_unrouted_768": round(results["demo-768"]["ratio"], 3),
        "ttft_base_route_vs_unrouted_qwen05_shape": round(results["qwen0.5b-shape"]["ratio"], 3),
        **({"ttft_base_route_vs_unrouted_qwen15_shape": round(results["qwen1.5b-shape"]["ratio"], 3)}
           if "qwen1.5b-shape" in results else {}),
        "ttft_follow_up_vs_unrouted": {k: round(v["follow_up_ratio"], 3) for k, v in results.items()},
        "ttft_ms": {k: {"routed": round(v["routed_ms"], 2), "unrouted": round(v["unrouted_ms"], 2)}
                    for k, v in results.items()},
    }))


if __name__ == "__main__":
    main()

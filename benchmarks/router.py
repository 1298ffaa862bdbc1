"""Router speed: the signals other than perplexity, and what routing adds to time to first token.

signals: Router.signals (one MiniLM encode of the message + the domain and escalation heads) on
  --n messages from router/data (domain texts alone, escalation texts after their previous answer),
  each text seen once so nothing comes from the embedding cache. The previous answer is embedded
  beforehand, as the app does when a reply ends (Router.remember). Threads as in the app: the
  cores llama.cpp does not use.
ttft: ChatService.respond on a new session, from the call to the first streamed text, greedy, on
  three paths, all ending on the base route:
  needed:   the Router with τp = τe = ∞ and τd = 0, so the perplexity decides (the message's domain
            is a modifier's, sure by τd 0): it is scored, and the scoring prefill is the reply's;
  unneeded: the Router with τd above 1: no modifier is sure, the route is base whatever the
            perplexity (policy.needs_perplexity), so where the logits are costly (Engine.score,
            ASK_ABOVE_MACS) it is not scored and the reply prefills the message; on the demo base
            they cost less than asking, so it is scored as on the first path;
  unrouted: no Router, the reply on the base.
  And the floor of the first path: Engine.score alone (every message row's logits, the prompt on
  both cores, nothing asked), then the unrouted reply, which reuses that prefill: the first token
  a router whose encode and heads cost nothing would give where the perplexity decides.
  Messages are domain texts whose most likely domain is a modifier's. Each goes through the three
  paths back to back (their order rotating from one message to the next), and before each the KV
  cache is left as a new conversation finds it (the system prompt, nothing of the message), so the
  paths are compared in pairs, seconds apart, on the same text: the ratio is the median of the
  per-message ratios. (Medians over the paths' runs minutes apart, as this benchmark first took
  them, put this VM's drift into the ratio: 1.05-1.35 on the 7B shape. They are printed too.) Then
  the same as a follow-up: the second message of a session, after a first turn and its reply (so
  the escalation detector has an answer to read, and the KV cache holds the conversation), after
  the background work a person's reading leaves time for: the reply's embedding (Router.settle).
  On the demo base, a 768-wide one and a Qwen2.5-0.5B-shaped one (--large: also
  Qwen2.5-1.5B-shaped; --huge: also Qwen2.5-7B-shaped, the default profile's base).
  Every timed message is new to the embedding cache. The signals of the routed messages are timed
  too, as the app runs them: on the router's thread, whose memory sat untouched while the base
  worked (on this VM that alone makes them slower, see benchmarks/idle.py): the table's last
  column, signals_in_app_ms in the JSON.

    .venv/bin/python benchmarks/router.py [--n 300] [--ttft-n 60] [--shape-n N] [--large] [--huge] [--models NAME ...]

The last line is JSON: signals_p50_ms, signals_p95_ms, perplexity_needed_share (of the signals'
messages, under the default τe and τd), ttft_base_route_vs_unrouted (the median over
messages of needed TTFT / unrouted TTFT on the demo base, where the perplexity decides),
ttft_base_route_unneeded_vs_unrouted (where it cannot change the route), ttft_scoring_floor_vs_unrouted
(the floor: the scoring prefill alone, the router's own work free), and the per-model figures
(ttft_ratio_of_medians: median TTFT / median unrouted TTFT).
"""

from __future__ import annotations

import argparse
import json
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
from models.demo import DemoSpec, write_model, write_shape  # noqa: E402
from models.engine import Engine  # noqa: E402
from router.decision import DOMAINS, Thresholds  # noqa: E402
from router.embeddings import Embedder  # noqa: E402
from router.evaluate import read_jsonl  # noqa: E402
from router.perplexity import Perplexity  # noqa: E402
from router.policy import needs_perplexity  # noqa: E402
from router.router import Router  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "router" / "data"
# name → (shape, messages per path). Perplexity needs the output layer's logits on every message
# token, which an unrouted reply computes for the last token only; how much that costs depends on
# the vocabulary against the body, so the last model has Qwen2.5-0.5B's shape (896 wide, 24 layers,
# 151,936 tokens; random weights) in the real model sets' Q8_0. (In F16 llama.cpp's CPU output layer
# runs at a third of the body's speed per row: ratio 1.98 there against 1.47 in Q8_0, same day.)
MODELS = {"demo": (DemoSpec(), None), "demo-768": (replace(DemoSpec(), n_embd=768, n_ff=2048), None),
          "qwen0.5b-shape": (replace(DemoSpec(), n_embd=896, n_ff=4864, n_head=14, n_head_kv=2, extra_layers=22,
                                     min_vocab=151_936, weight_type="q8_0"), 15)}
# --large: the smallest real base (qwen2.5-1.5b profile: 1536 wide, 28 layers), in Q8_0 (the profile
# ships Q4_K_M, which the gguf package cannot write; both are quantized CPU kernels). A 1.8 GB file,
# ~2 s per first token on one thread, so 9 messages per path: about 7 minutes.
LARGE = {"qwen1.5b-shape": (replace(DemoSpec(), n_embd=1536, n_ff=8960, n_head=12, n_head_kv=2, extra_layers=26,
                                    min_vocab=151_936, weight_type="q8_0"), 9)}
# --huge: the default profile's base (qwen2.5-7b: 3584 wide, 28 layers, 152,064 tokens) in Q8_0, every
# layer holding the same weights (models.demo.write_shape). An 8 GB file (9 GB resident: llama.cpp's
# AMX copy of it), ~11 s per first token on one thread: 6 messages per path, about 17 minutes.
HUGE = {"qwen7b-shape": (replace(DemoSpec(), n_embd=3584, n_ff=18944, n_head=28, n_head_kv=4, extra_layers=26,
                                  min_vocab=152_064, weight_type="q8_0"), 6)}


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
    for text, previous in cases[:10]:  # warm-up (the first calls allocate)
        router.signals(text + " warm-up", previous, None)
    times, needed = [], 0
    for text, previous in cases:
        start = time.perf_counter()
        escalation_p, probs = router.signals(text, previous, dict.fromkeys(DOMAINS, 0.25))
        times.append((time.perf_counter() - start) * 1000)
        needed += needs_perplexity(escalation_p, probs, router.thresholds)
    chars = [len(t) for t, _ in cases]
    return {"n": len(times), "p50_ms": percentile(times, 50), "p95_ms": percentile(times, 95),
            "max_ms": max(times), "mean_chars": statistics.mean(chars), "needed_share": needed / len(times)}


def first_text_ms(service: ChatService, message: str, session: str | None = None) -> float:
    """From the call to the first streamed text. The message is new to the router's embedding cache,
    as a message a person just typed is (the messages go through every path, and were chosen by
    the same embedder)."""
    if service.router:
        service.router.embedder.forget([message])
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
    if service.router:
        service.router.embedder.forget([first])
    for _ in service.respond(session, first, override="auto"):
        pass
    if service.router:
        service.router.settle()  # the answer's embedding is made while the user reads and types
    return first_text_ms(service, message, session)


def bench_ttft(path: Path, router_parts: tuple, messages: list[str], tmp: Path, threads: int) -> dict:
    engine = Engine(path, n_ctx=2048, n_threads=threads)
    settings = ChatSettings(temperature=0, max_tokens=16, seed=0)
    never = float("inf")
    thresholds = {"needed": Thresholds(tau_p=never, tau_e=never, tau_d=0.0, calibrated=True),
                  "unneeded": Thresholds(tau_p=never, tau_e=never, tau_d=1.01, calibrated=True)}
    paths = {name: ChatService(engine, Memory(tmp / f"{path.stem}-{name}.db"), settings, router=Router(
        Perplexity(engine.score, max_tokens=settings.max_tokens), t, *router_parts)) for name, t in thresholds.items()}
    paths["unrouted"] = ChatService(engine, Memory(tmp / f"{path.stem}-unrouted.db"), settings)
    signals_ms: list[float] = []  # the signals as the app runs them: on the router's thread, after the base's own work
    for name in thresholds:
        paths[name].router.signals = _timed(paths[name].router.signals, signals_ms)
    filler = [{"role": "system", "content": settings.system_prompt}, {"role": "user", "content": "§"}]

    def floor_ms(message: str) -> float:
        started = time.perf_counter()
        engine.score([filler[0], {"role": "user", "content": message}], max_tokens=settings.max_tokens)
        return (time.perf_counter() - started) * 1000 + first_text_ms(paths["unrouted"], message)

    def as_new() -> None:
        """The KV cache as a new conversation finds it: the system prompt, and none of the message the
        path before just prefilled (which the next path would otherwise reuse)."""
        engine.score(filler, max_tokens=settings.max_tokens)

    for m in messages[:4]:  # warm-up
        for name, service in paths.items():
            first_text_ms(service, f"{m} (warm-up {name})")
    signals_ms.clear()
    names = [*paths, "floor"]
    times = {f"{name}{kind}": [] for name in paths for kind in ("", "_follow_up")} | {"floor": []}
    for i, message in enumerate(messages):  # each message through every path, back to back
        order = names[i % 4:] + names[:i % 4]
        for name in order:
            as_new()
            times[name].append(floor_ms(message) if name == "floor" else first_text_ms(paths[name], message))
        for name in (n for n in order if n != "floor"):
            as_new()
            times[f"{name}_follow_up"].append(follow_up_ms(paths[name], messages[i - 1], message))
    scored = {}
    for name in thresholds:
        rows = paths[name].memory.db.execute("select route, perplexity from decisions").fetchall()
        assert all(route == "base" for route, _ in rows), "every routed message should take the base route"
        scored[name] = sum(p is not None for _, p in rows) / len(rows)
    assert scored["needed"] == 1.0
    med = {k: statistics.median(v) for k, v in times.items()}

    def paired(name: str, kind: str = "") -> list[float]:  # each message's time on a path ÷ its unrouted time
        return [a / b for a, b in zip(times[name + kind], times["unrouted" + kind])]

    return {"n": len(times["unrouted"]), "unrouted_ms": med["unrouted"], "unrouted_p95_ms": percentile(times["unrouted"], 95),
            **{f"{name}_{key}": value for name in thresholds for key, value in (
                ("ms", med[name]), ("p95_ms", percentile(times[name], 95)),
                ("ratio", statistics.median(paired(name))),
                ("ratio_iqr", (percentile(paired(name), 25), percentile(paired(name), 75))),
                ("ratio_of_medians", med[name] / med["unrouted"]),
                ("follow_up_ratio", statistics.median(paired(name, "_follow_up"))))},
            "follow_up_unrouted_ms": med["unrouted_follow_up"], "unneeded_scored_share": scored["unneeded"],
            "floor_ms": med["floor"], "floor_ratio": statistics.median(paired("floor")),
            "signals_p50_ms": percentile(signals_ms, 50), "signals_p95_ms": percentile(signals_ms, 95)}


def _timed(signals, times: list[float]):
    def run(*args):
        start = time.perf_counter()
        result = signals(*args)
        times.append((time.perf_counter() - start) * 1000)
        return result
    return run


def modifier_domain_messages(router: Router, n: int, seed: int) -> list[str]:
    """n domain texts whose most likely domain is a modifier's, so τd 0 makes the perplexity decide."""
    rows = read_jsonl(DATA / "domain.jsonl", ("text", "label"))
    random.Random(seed).shuffle(rows)
    chosen = []
    for row in rows:
        _, probs = router.signals(row["text"], None, None)
        if max(probs, key=probs.get) != "general":
            chosen.append(row["text"])
        if len(chosen) == n:
            return chosen
    raise RuntimeError(f"only {len(chosen)} domain texts lean to a modifier")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="messages for the signals timing (default 300)")
    parser.add_argument("--ttft-n", type=int, default=60, help="messages per path for TTFT (default 60)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: half the cores)")
    parser.add_argument("--shape-n", type=int, default=None,
                        help="messages per path on the Qwen shapes (default: 15 / 9 / 6, smaller to larger)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--large", action="store_true", help="also a Qwen2.5-1.5B-shaped base (~7 more minutes)")
    parser.add_argument("--huge", action="store_true", help="also a Qwen2.5-7B-shaped base (~20 more minutes, 8 GB of disk)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS | LARGE | HUGE), help="time only these bases")
    args = parser.parse_args()
    from models.engine import default_batch_threads, default_threads
    from router.domain import DomainClassifier
    from router.escalation import EscalationDetector

    llama_threads = args.threads or default_threads()
    parts = (Embedder(threads=1), DomainClassifier(), EscalationDetector())  # as launch.build_router
    signal_router = Router(Perplexity(lambda *a, **k: (0.0, 0)), Thresholds(), *parts)
    signals = bench_signals(signal_router, args.n, args.seed)
    print(f"signals (encode + heads), {signals['n']} messages, mean {signals['mean_chars']:.0f} chars, "
          f"1 encoder thread: p50 {signals['p50_ms']:.2f} ms  p95 {signals['p95_ms']:.2f} ms  "
          f"max {signals['max_ms']:.2f} ms")

    messages = modifier_domain_messages(signal_router, args.ttft_n, args.seed + 1)
    results = {}
    with tempfile.TemporaryDirectory(prefix="cogumi-bench-") as tmp:
        tmp = Path(tmp)
        chosen = MODELS | (LARGE if args.large else {}) | (HUGE if args.huge else {})
        if args.models:
            chosen = {k: v for k, v in (MODELS | LARGE | HUGE).items() if k in args.models}
        for name, (spec, n) in chosen.items():
            path = tmp / f"{name}.gguf"
            if name in HUGE:
                write_shape(path, spec)
            else:
                write_model(path, spec, "base")
            if n is not None and args.shape_n:  # a Qwen shape (the demo bases take --ttft-n)
                n = args.shape_n
            results[name] = bench_ttft(path, parts, messages[:n], tmp, llama_threads)
            path.unlink()
    print(f"  {100 * signals['needed_share']:.0f} % of them need the perplexity under τe {signal_router.thresholds.tau_e}, "
          f"τd {signal_router.thresholds.tau_d} (a sure modifier domain, no escalation)")
    batch_threads = default_batch_threads(llama_threads, 0)
    print(f"\nTTFT on the base route ({llama_threads} llama thread(s), prompt batches on {batch_threads}): first message "
          f"of a new session, then a follow-up (second message, after a reply). needed: the perplexity decides the "
          f"route; unneeded: it could not change it, so it is scored only where that costs less than asking (scored: "
          f"share of those). ratio: the median of each message's time ÷ its unrouted time, measured back to back "
          f"(IQR: their middle half); of medians: median time ÷ median unrouted time; floor: the scoring prefill "
          f"alone, as a router whose encode and heads cost nothing would give")
    print(f"{'model':<16}{'n':>4}{'unrouted ms':>13}{'needed ms':>11}{'ratio':>8}{'IQR':>14}{'of medians':>12}"
          f"{'unneeded ms':>13}{'ratio':>8}{'scored':>8}{'p95: unrouted':>15}{'needed':>9}{'unneeded':>10}"
          f"{'follow-up ratios':>18}{'signals p50/p95':>17}{'floor':>8}")
    for name, r in results.items():
        low, high = r["needed_ratio_iqr"]
        print(f"{name:<16}{r['n']:>4}{r['unrouted_ms']:>13.2f}{r['needed_ms']:>11.2f}{r['needed_ratio']:>8.3f}"
              f"{f'{low:.3f}-{high:.3f}':>14}{r['needed_ratio_of_medians']:>12.3f}"
              f"{r['unneeded_ms']:>13.2f}{r['unneeded_ratio']:>8.3f}{r['unneeded_scored_share']:>8.0%}"
              f"{r['unrouted_p95_ms']:>15.2f}{r['needed_p95_ms']:>9.2f}{r['unneeded_p95_ms']:>10.2f}"
              f"{r['needed_follow_up_ratio']:>9.3f} / {r['unneeded_follow_up_ratio']:.3f}"
              f"{r['signals_p50_ms']:>9.2f} / {r['signals_p95_ms']:.2f}{r['floor_ratio']:>8.3f}")
    short = {"demo": "", "demo-768": "_768", "qwen0.5b-shape": "_qwen05_shape", "qwen1.5b-shape": "_qwen15_shape",
             "qwen7b-shape": "_qwen7_shape"}
    print(json.dumps({
        "signals_p50_ms": round(signals["p50_ms"], 2), "signals_p95_ms": round(signals["p95_ms"], 2),
        "perplexity_needed_share": round(signals["needed_share"], 3),
        **{f"ttft_base_route_vs_unrouted{short[k]}": round(v["needed_ratio"], 3) for k, v in results.items()},
        **{f"ttft_base_route_unneeded_vs_unrouted{short[k]}": round(v["unneeded_ratio"], 3) for k, v in results.items()},
        **{f"ttft_scoring_floor_vs_unrouted{short[k]}": round(v["floor_ratio"], 3) for k, v in results.items()},
        "ttft_base_route_vs_unrouted_iqr": {k: [round(x, 3) for x in v["needed_ratio_iqr"]] for k, v in results.items()},
        "ttft_ratio_of_medians": {k: {"needed": round(v["needed_ratio_of_medians"], 3),
                                      "unneeded": round(v["unneeded_ratio_of_medians"], 3)} for k, v in results.items()},
        "ttft_follow_up_vs_unrouted": {k: {"needed": round(v["needed_follow_up_ratio"], 3),
                                           "unneeded": round(v["unneeded_follow_up_ratio"], 3)} for k, v in results.items()},
        "signals_in_app_ms": {k: {"p50": round(v["signals_p50_ms"], 2), "p95": round(v["signals_p95_ms"], 2)}
                              for k, v in results.items()},
        "ttft_ms": {k: {"needed": round(v["needed_ms"], 2), "unneeded": round(v["unneeded_ms"], 2),
                        "unrouted": round(v["unrouted_ms"], 2)} for k, v in results.items()},
    }))


if __name__ == "__main__":
    main()

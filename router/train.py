"""Train the router's two heads on router/data and write router/weights:

    python -m router.train [--holdout 0.2]

Seeded and CPU-only; most of the time goes to embedding the ~3,000 texts once. With --holdout a
stratified share of each file is kept out of training and scored, and nothing is written."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from router.decision import DOMAINS
from router.embeddings import Embedder
from router.evaluate import domain_report, escalation_report, read_jsonl
from router.heads import DOMAIN_FEATURES, ESCALATION_FEATURES, WEIGHTS_DIR, Head, domain_features, escalation_features

DATA_DIR = Path(__file__).resolve().parent / "data"


def fit(features: np.ndarray, labels: np.ndarray, n_out: int, seed: int, epochs: int = 60,
        batch: int = 32, lr: float = 2e-3, weight_decay: float = 1e-2) -> Head:
    """Mini-batch AdamW on class-balanced cross-entropy (a sigmoid output when n_out == 1)."""
    torch.manual_seed(seed)
    head = Head(features.shape[1], n_out)
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    counts = np.bincount(labels, minlength=max(n_out, 2)).astype(np.float32)
    if n_out == 1:
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(counts[0] / max(counts[1], 1.0)))
    else:
        loss_fn = nn.CrossEntropyLoss(weight=torch.from_numpy(counts.sum() / (n_out * np.maximum(counts, 1.0))))
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(batch):
            logits = head(x[idx])
            loss = loss_fn(logits[:, 0], y[idx].float()) if n_out == 1 else loss_fn(logits, y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    head.eval()
    return head


def split(rows: list[dict], share: float, seed: int, key: str = "label") -> tuple[list[dict], list[dict]]:
    """Stratified (train, held out); share 0 keeps everything for training."""
    if share <= 0:
        return rows, []
    rng, train, held = random.Random(seed), [], []
    for label in sorted({str(r[key]) for r in rows}):
        group = [r for r in rows if str(r[key]) == label]
        rng.shuffle(group)
        cut = round(len(group) * share)
        held += group[:cut]
        train += group[cut:]
    return train, held


def train_domain(embedder: Embedder, rows: list[dict], followups: list[dict], seed: int) -> Head:
    """Two passes: a head on messages alone gives the previous turn's probabilities for the
    follow-up pairs; the final head learns when to lean on them. Standalone messages are also
    shown with a random other message's probabilities as prior, keeping their own label, so a
    clear new topic is not dragged along by the previous one."""
    labels = np.array([DOMAINS.index(r["label"]) for r in rows])
    messages = embedder.encode([r["text"] for r in rows])
    alone = fit(domain_features(messages), labels, len(DOMAINS), seed)
    rng = np.random.default_rng(seed)
    probs = alone.probabilities(domain_features(messages))
    random_prior = probs[rng.permutation(len(rows))]
    parts = [(domain_features(messages), labels), (domain_features(messages, random_prior), labels)]
    if followups:
        follow_messages = embedder.encode([r["text"] for r in followups])
        prior = alone.probabilities(domain_features(embedder.encode([r["previous"] for r in followups])))
        follow_labels = np.array([DOMAINS.index(r["label"]) for r in followups])
        parts += [(domain_features(follow_messages, prior), follow_labels)] * 2  # rarer, so shown twice
    features = np.vstack([p[0] for p in parts])
    return fit(features, np.concatenate([p[1] for p in parts]), len(DOMAINS), seed)


def escalation_inputs(embedder: Embedder, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    messages = embedder.encode([r["text"] for r in rows])
    previous = embedder.encode([r["previous_answer"] or "" for r in rows])
    previous[[not r["previous_answer"] for r in rows]] = 0.0
    return messages, previous


def train_escalation(embedder: Embedder, rows: list[dict], seed: int) -> Head:
    messages, previous = escalation_inputs(embedder, rows)
    labels = np.array([int(r["label"]) for r in rows])
    return fit(escalation_features(messages, previous), labels, 1, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--holdout", type=float, default=0.0, help="share held out and scored; nothing is written")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(1)  # small batches: threads cost more than they give, and results stay reproducible
    domain = read_jsonl(args.data / "domain.jsonl", ("text", "label"))
    followups = read_jsonl(args.data / "followups.jsonl", ("previous", "text", "label"))
    escalation = read_jsonl(args.data / "escalation.jsonl", ("previous_answer", "text", "label"))
    domain_train, domain_held = split(domain, args.holdout, args.seed)
    follow_train, follow_held = split(followups, args.holdout, args.seed)
    esc_train, esc_held = split(escalation, args.holdout, args.seed)
    embedder = Embedder(cache_size=1 << 20)
    domain_head = train_domain(embedder, domain_train, follow_train, args.seed)
    escalation_head = train_escalation(embedder, esc_train, args.seed)
    seconds = time.perf_counter() - started
    if args.holdout > 0:
        print(json.dumps(holdout_report(embedder, domain_head, escalation_head, domain_held, follow_held, esc_held)))
        print(f"trained on {len(domain_train)} domain, {len(follow_train)} follow-up, {len(esc_train)} escalation "
              f"examples in {seconds:.1f} s; nothing written (--holdout)", file=sys.stderr)
        return 0
    meta = {"seed": args.seed, "domains": list(DOMAINS), "examples": {
        "domain": len(domain), "followups": len(followups), "escalation": len(escalation)}}
    domain_head.save(args.out / "domain.pt", {**meta, "features": DOMAIN_FEATURES})
    escalation_head.save(args.out / "escalation.pt", {**meta, "features": ESCALATION_FEATURES})
    print(f"trained in {seconds:.1f} s → {args.out}/domain.pt, escalation.pt")
    return 0


def holdout_report(embedder, domain_head, escalation_head, domain_rows, follow_rows, esc_rows) -> dict:
    probs = domain_head.probabilities(domain_features(embedder.encode([r["text"] for r in domain_rows])))
    report = {"domain": domain_report([r["label"] for r in domain_rows], [DOMAINS[i] for i in probs.argmax(1)])}
    if follow_rows:
        prior = domain_head.probabilities(domain_features(embedder.encode([r["previous"] for r in follow_rows])))
        probs = domain_head.probabilities(domain_features(embedder.encode([r["text"] for r in follow_rows]), prior))
        report["followups_accuracy"] = round(float(np.mean(
            [DOMAINS[i] == r["label"] for i, r in zip(probs.argmax(1), follow_rows)])), 4)
    messages, previous = escalation_inputs(embedder, esc_rows)
    p = escalation_head.probabilities(escalation_features(messages, previous))
    report["escalation"] = escalation_report([int(r["label"]) for r in esc_rows], [int(x >= 0.5) for x in p])
    return report


if __name__ == "__main__":
    sys.exit(main())

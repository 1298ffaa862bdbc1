"""Train the router's two heads on router/data and write router/weights:

    python -m router.train [--holdout 0.2] [--extra HISTORY.jsonl ...]

Seeded and CPU-only; most of the time goes to embedding the ~104,700 texts once, texts of one token
count 16 at a time, a thread per core (Embedder.preload). On this project's 2-core Intel VM it took
87 s, against 97-98 s with ONNX Runtime's SkipLayerNormalization fusion and 131-135 s one text at a
time, each pair alternating in one hour; on its AMD EPYC VM the whole run took 110-112 s (2026-12-02).
With --holdout a stratified share of each file is kept out of training and scored, and nothing is
written."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from router.decision import DOMAINS
from router.embeddings import Embedder
from router.domain import DomainClassifier
from router.escalation import EscalationDetector
from router.evaluate import (escalation_layers, evaluate_domain, evaluate_escalation, evaluate_followups,
                             read_jsonl)
from router.heads import (WEIGHTS_DIR, WORDS, WORDS_AND_MARKS, Head, TextFeatures, answers_asked, domain_dense,
                          escalation_dense, escalation_width)

DATA_DIR = Path(__file__).resolve().parent / "data"
C = 8.0  # inverse L2 strength, as in logistic regression; chosen on held-out splits (router/EVALUATION.md)
# Escalation sets from writers who saw no other data, one file each: each was first read once as a fresh
# evaluation set, then joined the training data. Held out a round of writers at a time, each round lifted
# F1 on the round left out (sets 30-73: 0.929 -> 0.938) until three in a row left it level, so sets from 133
# on stay evaluation sets (training time is near its 2-minute aim); every round is in router/EVALUATION.md.
BLIND_WRITERS = "blind_writers"
# The escalation head's character n-grams are held 1,000 times harder than the rest: on a short message they
# outweighed the meaning ("i love you" after a good answer: +5.7 to the logit from them, -4.1 from the
# embedding). With emoji and punctuation as word tokens (heads.WORDS_AND_MARKS), which only the character
# n-grams saw before, five held-out rounds of writers went 0.9218 / 0.0631 -> 0.9258 / 0.0598 (EVALUATION.md).
ESCALATION_CHAR_L2 = 1000.0
# ... and its word n-grams half as hard, as they then carry the exact cue words alone: 0.9258 / 0.0598 ->
# 0.9283 / 0.0586 on the same rounds (x0.25 0.9262, x0.1 0.9241, x2 0.9209).
ESCALATION_WORD_L2 = 0.5
FIT_THREADS = 2  # the fits are full-batch products over ~52,000 rows; a fixed count keeps them reproducible


def fit(texts: list[str], dense: np.ndarray, labels: np.ndarray, n_out: int, seed: int,
        fit_texts: list[str] | None = None, word_min_df: int = 1, max_iter: int = 400,
        word_tokens: str = WORDS, word_l2: float = 1.0, char_l2: float = 1.0) -> Head:
    """Class-balanced logistic regression (softmax when n_out > 1) with L2, by full-batch L-BFGS.
    The TF-IDF vocabulary is fitted on `fit_texts` (default: the training texts); word_l2 and char_l2
    multiply the L2 on the word and on the character n-grams' weights."""
    torch.manual_seed(seed)
    if fit_texts is None:
        text, text_rows = TextFeatures.fit_transform(texts, word_min_df, word_tokens)
    else:
        text, text_rows = TextFeatures.fit(fit_texts, word_min_df, word_tokens), None
    words, chars = slice(0, len(text.word.vocabulary_)), slice(len(text.word.vocabulary_), text.size)
    head = Head(text, dense.shape[1], n_out)
    x, y = head.inputs(texts, dense, text_rows), torch.from_numpy(labels)
    counts = np.bincount(labels, minlength=max(n_out, 2)).astype(np.float32)
    weights = torch.from_numpy(counts.sum() / (len(counts) * np.maximum(counts, 1.0)))[y]
    l2 = 1.0 / (2 * C * len(labels))
    optimizer = torch.optim.LBFGS(head.linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        logits = head(x)
        if n_out == 1:
            per_example = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.float(), reduction="none")
        else:
            per_example = nn.functional.cross_entropy(logits, y, reduction="none")
        value = (weights * per_example).mean() + l2 * head.linear.weight.pow(2).sum()
        # added on top of the plain L2, not folded into it, so a head at scale 1 (the domain head) is fitted
        # with the very same operations as before and comes out bit for bit the same
        for block, scale in ((words, word_l2), (chars, char_l2)):
            if scale != 1.0:
                value = value + l2 * (scale - 1.0) * head.linear.weight[:, block].pow(2).sum()
        value.backward()
        return value

    head.train()
    optimizer.step(loss)
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
    follow-up pairs; the final head learns how far to lean on them. Standalone messages are also
    shown with a random other message's probabilities as prior, keeping their own label, so a
    clear new topic is not dragged along by the previous one."""
    texts = [r["text"] for r in rows]
    labels = np.array([DOMAINS.index(r["label"]) for r in rows])
    messages = embedder.encode(texts)
    alone = fit(texts, domain_dense(texts, messages), labels, len(DOMAINS), seed)
    probs = alone.probabilities(texts, domain_dense(texts, messages))
    random_prior = probs[np.random.default_rng(seed).permutation(len(rows))]
    parts = [(texts, domain_dense(texts, messages), labels), (texts, domain_dense(texts, messages, random_prior), labels)]
    if followups:
        previous = [r["previous"] for r in followups]
        prior = alone.probabilities(previous, domain_dense(previous, embedder.encode(previous)))
        follow_texts = [r["text"] for r in followups]
        follow_labels = np.array([DOMAINS.index(r["label"]) for r in followups])
        parts += [(follow_texts, domain_dense(follow_texts, embedder.encode(follow_texts), prior), follow_labels)] * 2
    all_texts = [t for p in parts for t in p[0]]
    return fit(all_texts, np.vstack([p[1] for p in parts]), np.concatenate([p[2] for p in parts]), len(DOMAINS),
               seed, fit_texts=texts + [r["text"] for r in followups])


def escalation_inputs(embedder: Embedder, rows: list[dict], chunk: int = 1024) -> tuple[list[str], np.ndarray]:
    """The rows' texts and dense features, written `chunk` rows at a time into one array: the messages'
    and answers' layers for all ~38,000 rows of that day at once were two stacks of 0.35 GB each, new memory that
    only passed through (peak memory 3.36 -> 2.85 GB)."""
    asked = answers_asked([r["previous_answer"] for r in rows])
    dense = np.empty((len(rows), escalation_width()), np.float32)
    for start in range(0, len(rows), chunk):
        _, layers, previous = escalation_layers(rows[start:start + chunk], embedder)
        escalation_dense(layers, previous, asked[start:start + chunk], out=dense[start:start + len(layers)])
    return [r["text"] for r in rows], dense


def train_escalation(embedder: Embedder, rows: list[dict], seed: int) -> Head:
    """Word n-grams from two texts or more: the ones seen once were 61,000 of 82,000 and most of the
    weights file (3.1 -> 1.3 MB), and dropping them left leave-one-writer-out F1 as it was (0.926
    pooled over seven strangers' sets). On the domain head's held-out splits they are worth 0.005,
    so it keeps them."""
    texts, dense = escalation_inputs(embedder, rows)
    # L-BFGS stops at 60 steps, not at its tolerance (~180 steps, 12.5 s of the 16 s fit): held out a
    # round of writers at a time over sets 30-91, F1 / FPR 0.939 / 0.043 at 400 steps, 100 and 60;
    # 40 steps gave 0.939 / 0.044, 38 of 49 sets at F1 >= 0.92 against 40-41 (router/EVALUATION.md).
    return fit(texts, dense, np.array([int(r["label"]) for r in rows]), 1, seed, word_min_df=2, max_iter=60,
               word_tokens=WORDS_AND_MARKS, word_l2=ESCALATION_WORD_L2, char_l2=ESCALATION_CHAR_L2)


def no_huge_pages() -> None:
    """numpy asks Linux for huge pages for every large array. Where the kernel then compacts memory on
    the spot to make them (transparent_hugepage/defrag "madvise", Ubuntu's default), touching a new GB
    took 0.3-9.3 s on this project's VM against ~0.5 s in ordinary pages, and this run touches ~3 GB:
    kernel time 14.4-14.8 -> 4.3-4.6 s, router.train 137.3/139.9 -> 124.2/127.5 s, the same bytes out."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage  # numpy's switch for it (NUMPY_MADVISE_HUGEPAGE)
    except ImportError:  # another numpy: its default stands
        return
    _set_madvise_hugepage(False)


def read_data(data: Path, extras: list[Path]) -> tuple[list[dict], list[dict], list[dict]]:
    """The domain, follow-up and escalation rows of the data folder, its blind writers' sets, and the
    --extra files: a history export mixes both formats, each row saying its kind; a file as
    router.evaluate reads one has no kinds, and its rows are of the kind their keys say."""
    domain = read_jsonl(data / "domain.jsonl", ("text", "label"))
    followups = read_jsonl(data / "followups.jsonl", ("previous", "text", "label"))
    escalation = read_jsonl(data / "escalation.jsonl", ("previous_answer", "text", "label"))
    for path in sorted((data / BLIND_WRITERS).glob("*.jsonl")):
        escalation += read_jsonl(path, ("previous_answer", "text", "label"))
    for extra in extras:
        more_domain = read_jsonl(extra, ("text", "label"), "domain", allow_empty=True)
        more_escalation = read_jsonl(extra, ("previous_answer", "text", "label"), "escalation", allow_empty=True)
        if not more_domain and not more_escalation:
            raise ValueError(f"{extra}: no examples: rows are {{text, label}} (domain) or "
                             f"{{previous_answer, text, label}} (escalation)")
        domain, escalation = domain + more_domain, escalation + more_escalation
    return domain, followups, escalation


def main(argv: list[str] | None = None) -> int:
    from launch import bounded  # launch.py's argparse types, as its own flags check numbers

    parser = argparse.ArgumentParser(prog="python -m router.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    # checked here: a share out of range trained and wrote the heads, or failed after the encode
    parser.add_argument("--holdout", type=bounded(float, lambda v: 0 <= v <= 0.9, "a share from 0 to 0.9"), default=0.0,
                        help="share held out and scored; nothing is written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", type=Path, action="append", default=[], metavar="FILE",
                        help="more labelled rows, e.g. python -m router.history --export FILE (repeatable)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    no_huge_pages()
    torch.set_num_threads(FIT_THREADS)  # the escalation fit: 24.3 s on one thread, 16.4 s on two
    try:  # every file read and checked before the encode, which takes a minute and more
        domain, followups, escalation = read_data(args.data, args.extra)
    except (OSError, ValueError) as exc:
        print(f"error: {f'{exc.filename}: {exc.strerror}' if getattr(exc, 'filename', None) else exc}", file=sys.stderr)
        return 2
    say(f"read {len(domain)} domain, {len(followups)} follow-up, {len(escalation)} escalation examples")
    domain_train, domain_held = split(domain, args.holdout, args.seed)
    follow_train, follow_held = split(followups, args.holdout, args.seed)
    esc_train, esc_held = split(escalation, args.holdout, args.seed)
    embedder = Embedder(cache_size=1 << 20)
    texts = [r["text"] for r in domain + followups + escalation] + [r["previous"] for r in followups] + \
        [r["previous_answer"] for r in escalation if r["previous_answer"]]
    # a thread per usable core: the threads share one encoder, so each one more costs no memory
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    say(f"encoding {len(set(texts)):,} texts on {cores} thread{'s' * (cores != 1)}…")
    embedder.preload(texts, threads=cores)
    say("fitting the domain head…")
    domain_head = train_domain(embedder, domain_train, follow_train, args.seed)
    say("fitting the escalation head…")
    escalation_head = train_escalation(embedder, esc_train, args.seed)
    seconds = time.perf_counter() - started
    if args.holdout > 0:
        print(json.dumps(holdout_report(embedder, domain_head, escalation_head, domain_held, follow_held, esc_held)))
        print(f"trained on {len(domain_train)} domain, {len(follow_train)} follow-up, {len(esc_train)} escalation "
              f"examples in {seconds:.1f} s; nothing written (--holdout)", file=sys.stderr)
        return 0
    meta = {"seed": args.seed, "domains": list(DOMAINS), "examples": {
        "domain": len(domain), "followups": len(followups), "escalation": len(escalation)}}
    domain_head.save(args.out / "domain.pt", meta)
    escalation_head.save(args.out / "escalation.pt", meta)
    print(f"trained in {seconds:.1f} s → {args.out}/domain.pt, escalation.pt")
    return 0


def say(stage: str) -> None:
    """What training is doing now, on stderr (QA 24: minutes of silence; stdout is --holdout's report)."""
    print(stage, file=sys.stderr, flush=True)


def holdout_report(embedder, domain_head, escalation_head, domain_rows, follow_rows, esc_rows) -> dict:
    """The held-out rows scored as router.evaluate scores a file (escalation at P 0.5)."""
    classifier = DomainClassifier(head=domain_head)
    report = {"domain": evaluate_domain(domain_rows, embedder, classifier)}
    if follow_rows:
        report["followups_accuracy"] = evaluate_followups(follow_rows, embedder, classifier)["accuracy"]
    report["escalation"] = evaluate_escalation(esc_rows, embedder, EscalationDetector(head=escalation_head), 0.5)
    return report


if __name__ == "__main__":
    sys.exit(main())

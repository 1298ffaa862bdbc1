"""Score the trained heads on labelled files:

    python -m router.evaluate --domain FILE --escalation FILE [--followups FILE]

domain lines are {"text", "label"}; escalation lines are {"previous_answer", "text", "label"}
(label 1 = the user is unhappy); followups lines are {"previous", "text", "label"}: a message and
the one before it, routed as the app routes a second turn (router/data/followups.jsonl's format).
Prints one JSON object with a "domain", "escalation" and/or "followups" part (the first's shape)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

from router.decision import DOMAINS


def read_jsonl(path: Path, keys: tuple[str, ...], kind: str | None = None, allow_empty: bool = False) -> list[dict]:
    """Rows of a JSON Lines file, each checked for `keys` and their values' types (and a label's value, by
    the format `keys` name); blank lines are skipped. A file that mixes formats (router.history's
    export) marks each row with "kind"; with `kind`, rows of another kind are skipped, and a row with no
    "kind" is of the kind its keys say (previous_answer: escalation; previous: followups), so a plain file
    is read as one."""
    rows = []
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte order mark, as Windows Notepad writes, is skipped
            lines = list(f)
    except UnicodeDecodeError as exc:
        wide = _wide_unicode(exc.object[:4096])
        if wide:
            raise ValueError(f"{path}: {wide} text, not UTF-8: save it as UTF-8") from exc
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start + 1:,})") from exc
    wide = _wide_unicode("".join(lines[:50]).encode("utf-8", "surrogatepass"))
    if wide:  # ASCII in UTF-16 without its byte order mark is valid UTF-8, NULs and all
        raise ValueError(f"{path}: {wide} text, not UTF-8: save it as UTF-8")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: not a JSON object, as {{{', '.join(map(json.dumps, keys))}}}")
        if kind and row.get("kind", _kind_of(row)) != kind:
            continue
        missing = [k for k in keys if k not in row]
        if missing:
            raise ValueError(f"{path}:{number}: missing {', '.join(missing)}")
        problem = _value_problem(row, keys)
        if problem:
            raise ValueError(f"{path}:{number}: {problem}")
        rows.append(row)
    if not rows and not allow_empty:
        raise ValueError(f"{path}: no examples" + (f" of kind {kind!r}" if kind else ""))
    return rows


def _wide_unicode(start: bytes) -> str | None:
    """"UTF-16" or "UTF-32" for a file that starts so (Notepad's "Unicode" is UTF-16, with its byte order mark, or
    without), else None. No JSON text holds a NUL byte: UTF-8 JSON Lines never do."""
    if start[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff") or start[:4].count(0) == 3:
        return "UTF-32"
    if start[:2] in (b"\xff\xfe", b"\xfe\xff") or 0 in start:
        return "UTF-16"
    return None


def _kind_of(row: dict) -> str:
    return "escalation" if "previous_answer" in row else "followups" if "previous" in row else "domain"


def _value_problem(row: dict, keys: tuple[str, ...]) -> str | None:
    """What is wrong with a row's values, or None: texts are text (an escalation row's previous answer may
    be null: no answer yet); a label is 0 or 1 in an escalation row, a domain elsewhere."""
    for key in (k for k in keys if k != "label"):
        value = row[key]
        if value is None and key == "previous_answer":
            continue
        if not isinstance(value, str):
            return f"{key} is text, not {json.dumps(value)[:40]}"
        half = next((i for i, c in enumerate(value) if "\ud800" <= c <= "\udfff"), None)
        if half is not None:  # JSON's "\ud800" escape: no UTF-8 for the tokenizer
            return f"{key} holds half of a UTF-16 pair (character {half + 1}): not text a person could type"
    if "label" not in keys:
        return None
    label = row["label"]
    if "previous_answer" in keys:
        if isinstance(label, bool) or label not in (0, 1):
            return f"label is 0 or 1 (1: the user is unhappy), not {json.dumps(label)[:40]}"
    elif label not in DOMAINS:
        return f"label is {', '.join(DOMAINS[:-1])} or {DOMAINS[-1]}, not {json.dumps(label)[:40]}"
    return None


def domain_report(truth: list[str], predicted: list[str]) -> dict:
    """Macro-F1 over the labels the file holds or the heads guessed: one neither holds has no F1 (null),
    where it counted as 0 (three right answers over three labels scored 0.75)."""
    present = [d for d in DOMAINS if d in set(truth) | set(predicted)]
    per_label = dict(zip(present, f1_score(truth, predicted, labels=present, average=None, zero_division=0)))
    return {
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "macro_f1": round(float(f1_score(truth, predicted, labels=present, average="macro", zero_division=0)), 4),
        "per_label": {d: round(float(per_label[d]), 4) if d in per_label else None for d in DOMAINS},
        # {true label: {predicted label: count}}
        "confusion": {t: {p: int(n) for p, n in zip(DOMAINS, row)}
                      for t, row in zip(DOMAINS, confusion_matrix(truth, predicted, labels=list(DOMAINS)))},
    }


def escalation_report(truth: list[int], predicted: list[int]) -> dict:
    """F1, precision, recall and false-positive rate of the complaints; a figure with nothing to count is None
    (QA 24: a file of only 👍 rows read recall 0.0, as if every complaint were missed, where there was none)."""
    truth_a, pred_a = np.asarray(truth), np.asarray(predicted)
    negatives = int((truth_a == 0).sum())
    false_positives = int(((pred_a == 1) & (truth_a == 0)).sum())
    f1 = f1_score(truth, predicted, zero_division=np.nan) if (truth_a == 1).any() else np.nan
    return {
        "f1": _figure(f1),
        "precision": _figure(precision_score(truth, predicted, zero_division=np.nan)),
        "recall": _figure(recall_score(truth, predicted, zero_division=np.nan)),
        "fpr": _figure(false_positives / negatives if negatives else np.nan),
    }


def _figure(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 4)


def evaluate_domain(rows: list[dict], embedder, classifier, prior: np.ndarray | None = None) -> dict:
    """rows as read_jsonl gives them, their labels checked there."""
    texts = [r["text"] for r in rows]
    probs = classifier.score_many(texts, embedder.encode(texts), prior)
    return domain_report([r["label"] for r in rows], [DOMAINS[i] for i in probs.argmax(axis=1)])


def evaluate_followups(rows: list[dict], embedder, classifier) -> dict:
    """Each message with the previous message's domain probabilities as its prior, as Router.decide
    reads the session's last decision (for a second turn, that message's probabilities alone)."""
    previous = [r["previous"] for r in rows]
    prior = classifier.score_many(previous, embedder.encode(previous))
    return evaluate_domain(rows, embedder, classifier, prior)


def escalation_layers(rows: list[dict], embedder) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The rows' texts, their Embedder.layers, and their previous answers' (zeros where none)."""
    texts = [r["text"] for r in rows]
    previous = embedder.layers([r["previous_answer"] or "" for r in rows])
    previous[[not r["previous_answer"] for r in rows]] = 0.0
    return texts, embedder.layers(texts), previous


def evaluate_escalation(rows: list[dict], embedder, detector, tau_e: float) -> dict:
    texts, layers, previous = escalation_layers(rows, embedder)
    probs = detector.score_many(texts, layers, previous, [r["previous_answer"] for r in rows])
    return escalation_report([int(r["label"]) for r in rows], [int(p >= tau_e) for p in probs])


def main(argv: list[str] | None = None) -> int:
    from launch import bounded  # launch.py's argparse types, as its own flags check numbers

    parser = argparse.ArgumentParser(prog="python -m router.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", type=Path, help="JSON Lines of {text, label}")
    parser.add_argument("--escalation", type=Path, help="JSON Lines of {previous_answer, text, label}")
    parser.add_argument("--followups", type=Path, help="JSON Lines of {previous, text, label}")
    parser.add_argument("--tau-e", type=bounded(float, lambda v: 0 <= v <= 1, "a probability from 0 to 1"),
                        default=None, help="escalation threshold (default: the demo profile's)")
    args = parser.parse_args(argv)
    if not (args.domain or args.escalation or args.followups):
        parser.error("give --domain FILE, --escalation FILE, --followups FILE, or more than one")
    try:
        domain_rows = read_jsonl(args.domain, ("text", "label"), "domain") if args.domain else None
        escalation_rows = (read_jsonl(args.escalation, ("previous_answer", "text", "label"), "escalation")
                           if args.escalation else None)
        followup_rows = read_jsonl(args.followups, ("previous", "text", "label")) if args.followups else None
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from router.domain import DomainClassifier
    from router.embeddings import Embedder
    from router.escalation import EscalationDetector

    embedder, report = Embedder(cache_size=1 << 20), {}
    try:
        classifier = DomainClassifier() if domain_rows or followup_rows else None
        if domain_rows:
            report["domain"] = evaluate_domain(domain_rows, embedder, classifier)
        if escalation_rows:
            report["escalation"] = evaluate_escalation(escalation_rows, embedder, EscalationDetector(),
                                                       args.tau_e if args.tau_e is not None else default_tau_e())
        if followup_rows:
            report["followups"] = evaluate_followups(followup_rows, embedder, classifier)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


def default_tau_e() -> float:
    from router.decision import Thresholds

    try:
        from models.manifest import get_profile  # the thresholds live in the profile
        return Thresholds.from_settings(get_profile("demo").settings).tau_e
    except Exception:
        return Thresholds().tau_e


if __name__ == "__main__":
    sys.exit(main())

"""python -m router.evaluate on small files: the report's shape and arithmetic, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from router.evaluate import domain_report, escalation_report

ROOT = Path(__file__).resolve().parents[2]


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "router.evaluate", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_domain_report_arithmetic():
    truth = ["code", "code", "reasoning", "automation", "general", "general"]
    guess = ["code", "general", "reasoning", "automation", "general", "code"]
    r = domain_report(truth, guess)
    assert r["accuracy"] == round(4 / 6, 4)
    assert r["per_label"] == {"code": 0.5, "reasoning": 1.0, "automation": 1.0, "general": 0.5}
    assert r["macro_f1"] == 0.75
    assert r["confusion"]["code"] == {"code": 1, "reasoning": 0, "automation": 0, "general": 1}
    assert r["confusion"]["general"]["code"] == 1


def test_escalation_report_arithmetic():
    r = escalation_report([1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 1, 0, 0, 0])
    assert r == {"f1": round(2 / 3, 4), "precision": round(2 / 3, 4), "recall": round(2 / 3, 4), "fpr": 0.25}


def test_a_figure_with_nothing_to_count_is_null_not_zero():
    """QA 24 #5: a history export with only 👍 (no complaint) read f1, precision and recall 0.0, as if the router
    missed every complaint; with no complaints there is nothing to find. The domain report says null too."""
    assert escalation_report([0, 0, 0], [0, 0, 0]) == {"f1": None, "precision": None, "recall": None, "fpr": 0.0}
    assert escalation_report([0, 0], [1, 0]) == {"f1": None, "precision": 0.0, "recall": None, "fpr": 0.5}
    assert escalation_report([1, 1], [1, 0]) == {"f1": round(2 / 3, 4), "precision": 1.0, "recall": 0.5, "fpr": None}
    assert escalation_report([1, 1], [0, 0]) == {"f1": 0.0, "precision": None, "recall": 0.0, "fpr": None}


def test_the_cli_scores_both_files(tmp_path):
    domain = write_jsonl(tmp_path / "domain.jsonl", [
        {"text": "Fix this Python error: TypeError: unsupported operand type(s) for +: 'int' and 'str'", "label": "code"},
        {"text": "write a regex that matches US zip codes", "label": "code"},
        {"text": "If 3 painters paint a house in 8 hours, how long do 4 painters take?", "label": "reasoning"},
        {"text": "What is the derivative of x^3 * sin(x)?", "label": "reasoning"},
        {"text": "Add a meeting with Dana to my Google Calendar tomorrow at 10 and send her the invite",
         "label": "automation"},
        {"text": "turn off all the lights in the house at 11pm every night", "label": "automation"},
        {"text": "What's a good book to read on a rainy weekend?", "label": "general"},
        {"text": "How long should I boil an egg for a runny yolk?", "label": "general"},
    ])
    escalation = write_jsonl(tmp_path / "escalation.jsonl", [
        {"previous_answer": "The capital of Australia is Sydney.", "text": "No, that's wrong. It's Canberra.",
         "label": 1},
        {"previous_answer": "Here's the function:\n```python\ndef add(a, b): return a - b\n```",
         "text": "this doesn't work, it subtracts instead of adding", "label": 1},
        {"previous_answer": "Preheat the oven to 180°C and bake for 25 minutes.", "text": "perfect, thank you!",
         "label": 0},
        {"previous_answer": "You can use `git stash` to save your changes.", "text": "cool. how do I see the stash list?",
         "label": 0},
    ])
    done = evaluate("--domain", str(domain), "--escalation", str(escalation))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report) == {"domain", "escalation"}
    assert set(report["domain"]) == {"accuracy", "macro_f1", "per_label", "confusion"}
    assert set(report["escalation"]) == {"f1", "precision", "recall", "fpr"}
    assert sum(sum(row.values()) for row in report["domain"]["confusion"].values()) == 8
    # Clear-cut examples, written for this test, not taken from the training data.
    assert report["domain"]["accuracy"] >= 0.75 and report["escalation"]["f1"] >= 0.66


def test_either_part_alone(tmp_path):
    escalation = write_jsonl(tmp_path / "e.jsonl", [
        {"previous_answer": "2 + 2 = 5", "text": "that's not right", "label": 1},
        {"previous_answer": "Done, the lights are off.", "text": "thanks!", "label": 0},
    ])
    done = evaluate("--escalation", str(escalation))
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) == {"escalation"}


def test_follow_ups_are_scored_in_the_context_of_the_previous_message(tmp_path):
    """--followups FILE: {previous, text, label} rows, each message routed as the app routes a second
    turn, with the previous message's domain probabilities as its prior; the domain part's shape."""
    followups = write_jsonl(tmp_path / "f.jsonl", [
        {"previous": "How do I read a CSV file into a list of dicts in Python?", "text": "and in Rust?", "label": "code"},
        {"previous": "Write a bash one-liner that counts lines in every .log file", "text": "now for .txt too",
         "label": "code"},
        {"previous": "A train leaves at 3pm going 80 km/h; when does it cover 200 km?", "text": "and at 120?",
         "label": "reasoning"},
        {"previous": "Every Monday at 9, email me last week's sales totals from Shopify", "text": "also send it to Priya",
         "label": "automation"},
        {"previous": "Fix this SQL: SELECT * FROM orders WHERE date > '2024-01-01' GROUP BY customer",
         "text": "unrelated, but what's a good gift for my dad's 60th?", "label": "general"},
    ])
    done = evaluate("--followups", str(followups))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report) == {"followups"} and set(report["followups"]) == {"accuracy", "macro_f1", "per_label", "confusion"}
    assert sum(sum(row.values()) for row in report["followups"]["confusion"].values()) == 5
    assert report["followups"]["accuracy"] >= 0.8  # clear cases, written for this test
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "and in Rust?", "label": "code"}])
    done = evaluate("--followups", str(bad))
    assert done.returncode == 2 and "missing previous" in done.stderr


@pytest.mark.parametrize("content, message", [
    ('{"text": "hi", "label": "general"}\nnot json\n', "bad.jsonl:2: not valid JSON"),
    ('{"text": "hi"}\n', "bad.jsonl:1: missing label"),
    ('{"text": "hi", "label": "poetry"}\n', "bad.jsonl:1: label is code, reasoning, automation or general, not \"poetry\""),
    ("", "bad.jsonl: no examples"),
    # QA, the fourth pass: tracebacks, a scikit-learn message, or no file and line
    ('["hi", "code"]\n', "bad.jsonl:1: not a JSON object"),
    ('"hi"\n', "bad.jsonl:1: not a JSON object"),
    ('{"text": null, "label": "code"}\n', "bad.jsonl:1: text is text, not null"),
    (b'{"text": "caf\xe9", "label": "code"}\n', "bad.jsonl: not UTF-8 text"),
    # QA 25: Notepad's "Unicode" was "not UTF-8 text (byte 1)", with no word of what it was
    ('{"text": "hi", "label": "code"}\n'.encode("utf-16"), "bad.jsonl: UTF-16 text, not UTF-8: save it as UTF-8"),
    # QA 26: without its byte order mark it was "not valid JSON (Expecting property name…)"
    ('{"text": "hi", "label": "code"}\n'.encode("utf-16-le"), "bad.jsonl: UTF-16 text, not UTF-8: save it as UTF-8"),
    # QA 27: with an accented letter it was "not UTF-8 text (byte 21)"; UTF-32 was named UTF-16
    ('{"text": "écrire", "label": "code"}\n'.encode("utf-16-le"), "bad.jsonl: UTF-16 text, not UTF-8: save it as UTF-8"),
    ('{"text": "écrire", "label": "code"}\n'.encode("utf-16-be"), "bad.jsonl: UTF-16 text, not UTF-8: save it as UTF-8"),
    ('{"text": "écrire", "label": "code"}\n'.encode("utf-32"), "bad.jsonl: UTF-32 text, not UTF-8: save it as UTF-8"),
])
def test_bad_files_get_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    done = evaluate("--domain", str(path))
    assert done.returncode == 2 and message in done.stderr and not done.stdout
    assert "Traceback" not in done.stderr


def test_a_file_saved_with_a_byte_order_mark_is_read(tmp_path):
    """QA 24: a file from Windows Notepad (UTF-8 with a BOM) was refused as "not valid JSON (Unexpected UTF-8 BOM
    (decode using utf-8-sig))"."""
    from router.evaluate import read_jsonl

    path = tmp_path / "notepad.jsonl"
    path.write_bytes('{"text": "write a regex for emails", "label": "code"}\r\n'.encode("utf-8-sig"))
    assert read_jsonl(path, ("text", "label")) == [{"text": "write a regex for emails", "label": "code"}]


@pytest.mark.parametrize("label", ['"yes"', "2", "-1", "0.5", "null"])
def test_an_escalation_label_is_0_or_1(tmp_path, label):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"previous_answer": "Done.", "text": "thanks", "label": 0}\n'
                    f'{{"previous_answer": "Done.", "text": "wrong again", "label": {label}}}\n')
    done = evaluate("--escalation", str(path))
    assert done.returncode == 2 and not done.stdout and "Traceback" not in done.stderr
    assert f"bad.jsonl:2: label is 0 or 1 (1: the user is unhappy), not {json.dumps(json.loads(label))}" in done.stderr


def test_macro_f1_is_over_the_labels_a_file_holds():
    """QA: three right answers over three labels scored a macro-F1 of 0.75, the fourth label's F1 taken as 0."""
    r = domain_report(["code", "reasoning", "general"], ["code", "reasoning", "general"])
    assert r["macro_f1"] == 1.0 and r["accuracy"] == 1.0
    assert r["per_label"] == {"code": 1.0, "reasoning": 1.0, "automation": None, "general": 1.0}
    wrong = domain_report(["code", "code"], ["code", "automation"])  # a label guessed but not in the file counts
    assert wrong["per_label"]["automation"] == 0.0 and wrong["macro_f1"] == round((2 / 3 + 0) / 2, 4)


def test_a_missing_file_and_no_arguments(tmp_path):
    done = evaluate("--domain", str(tmp_path / "nope.jsonl"))
    assert done.returncode == 2 and "nope.jsonl" in done.stderr
    assert evaluate().returncode == 2


@pytest.mark.parametrize("tau", ["1.5", "-0.1", "nan"])
def test_tau_e_is_a_probability(tmp_path, tau):
    """QA: --tau-e 1.5 and nan ran, and reported F1 0 as if the heads had found nothing."""
    path = write_jsonl(tmp_path / "e.jsonl", [{"previous_answer": "Done.", "text": "wrong again", "label": 1}])
    done = evaluate("--escalation", str(path), "--tau-e", tau)
    assert done.returncode == 2 and f"argument --tau-e: a probability from 0 to 1, not {tau}" in done.stderr
    assert not done.stdout


def test_half_an_emoji_in_a_file_is_named_with_its_line(tmp_path):
    """QA: a JSON escape of half a UTF-16 pair ("\\ud800") was a tokenizer's TypeError, no file or line."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": "code"}\n{"text": "b\\ud800", "label": "general"}\n')
    done = evaluate("--domain", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "bad.jsonl:2: text holds half of a UTF-16 pair (character 2)" in done.stderr

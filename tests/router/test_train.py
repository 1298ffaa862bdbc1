"""python -m router.train end to end, on a small sample of router/data: what it writes is what the
app loads, it is seeded, and --holdout scores a stratified share and writes nothing."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

from router import train
from router.decision import DOMAINS
from router.domain import DomainClassifier
from router.embeddings import Embedder
from router.escalation import EscalationDetector
from router.evaluate import evaluate_escalation, read_jsonl

PER_DOMAIN, FOLLOWUPS, PER_ESCALATION_LABEL = 24, 16, 30


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """A few rows of each label from the committed data, as router.train reads them."""
    rng, folder = random.Random(5), tmp_path_factory.mktemp("router-data")
    domain = read_jsonl(train.DATA_DIR / "domain.jsonl", ("text", "label"))
    escalation = read_jsonl(train.DATA_DIR / "escalation.jsonl", ("previous_answer", "text", "label"))
    write_jsonl(folder / "domain.jsonl", [r for d in DOMAINS for r in rng.sample([r for r in domain if r["label"] == d], PER_DOMAIN)])
    write_jsonl(folder / "followups.jsonl", rng.sample(read_jsonl(train.DATA_DIR / "followups.jsonl", ("previous", "text", "label")), FOLLOWUPS))
    write_jsonl(folder / "escalation.jsonl", [r for label in (0, 1) for r in rng.sample(
        [r for r in escalation if int(r["label"]) == label], PER_ESCALATION_LABEL)])
    return folder


@pytest.fixture(scope="module")
def trained(small_data, tmp_path_factory):
    """Two runs with the same seed, the second with a history export as --extra."""
    extra = tmp_path_factory.mktemp("export") / "history.jsonl"
    write_jsonl(extra, [
        {"kind": "domain", "text": "turn this into a create_ticket call", "label": "automation", "source": "override"},
        {"kind": "escalation", "previous_answer": "2 + 2 = 5.", "text": "no, that's wrong", "label": 1, "source": "feedback"},
        # rows as router.evaluate reads them, with no "kind" (QA: a plain domain row was refused for want of
        # a previous_answer, and a plain escalation row trained the domain head on the label 1)
        {"text": "every Monday email me the sales totals", "label": "automation"},
        {"previous_answer": "Canberra is the capital.", "text": "thanks!", "label": 0},
    ])
    outs = [tmp_path_factory.mktemp(f"weights{i}") for i in range(3)]
    assert train.main(["--data", str(small_data), "--out", str(outs[0])]) == 0
    assert train.main(["--data", str(small_data), "--out", str(outs[1])]) == 0
    assert train.main(["--data", str(small_data), "--out", str(outs[2]), "--extra", str(extra)]) == 0
    return outs


def test_the_heads_it_writes_load_in_the_app_and_record_their_data(trained):
    for out, extra in ((trained[0], 0), (trained[2], 2)):
        domain, escalation = DomainClassifier(out / "domain.pt"), EscalationDetector(out / "escalation.pt")
        assert domain.meta["examples"] == {"domain": len(DOMAINS) * PER_DOMAIN + extra, "followups": FOLLOWUPS,
                                           "escalation": 2 * PER_ESCALATION_LABEL + extra}
        assert escalation.meta == domain.meta and domain.meta["seed"] == 0


@pytest.mark.parametrize("content, message", [
    ('{"text": "hi", "label": "poetry"}\n', "bad.jsonl:1: label is code, reasoning, automation or general"),
    ('{"previous_answer": "Done.", "text": "wrong", "label": "yes"}\n', "bad.jsonl:1: label is 0 or 1"),
    ("[1, 2]\n", "bad.jsonl:1: not a JSON object"),
    ("not json\n", "bad.jsonl:1: not valid JSON"),
    ('{"previous": "hi", "text": "and in Rust?", "label": "code"}\n', "bad.jsonl: no examples"),
    (None, "bad.jsonl: No such file"),
    ("dir", "bad.jsonl: Is a directory"),
])
def test_a_bad_extra_file_is_named_before_anything_is_encoded(small_data, tmp_path, capsys, content, message):
    """QA: each of these was a traceback, the labels' after more than a minute of encoding."""
    bad = tmp_path / "bad.jsonl"
    if content == "dir":
        bad.mkdir()
    elif content is not None:
        bad.write_text(content)
    assert train.main(["--data", str(small_data), "--out", str(tmp_path / "w"), "--extra", str(bad)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_it_trains_on_the_blind_writers_sets_too(small_data, tmp_path):
    """router/data/blind_writers holds escalation sets that strangers wrote, one file each, read once
    as fresh evaluation sets before they joined the training data."""
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    (data / "blind_writers").mkdir()
    write_jsonl(data / "blind_writers" / "set99.jsonl", [
        {"previous_answer": "Lyon is the capital of France.", "text": "it's Paris??", "label": 1},
        {"previous_answer": "Paris is the capital of France.", "text": "merci!", "label": 0}])
    assert train.main(["--data", str(data), "--out", str(tmp_path / "weights")]) == 0
    meta = EscalationDetector(tmp_path / "weights" / "escalation.pt").meta
    assert meta["examples"]["escalation"] == 2 * PER_ESCALATION_LABEL + 2


def test_the_heads_fit_what_they_were_trained_on(trained, small_data):
    """Not a bar for new text (router.evaluate is), but a head that cannot reproduce most of its own
    training labels was not trained."""
    embedder = Embedder()
    domain_rows = read_jsonl(small_data / "domain.jsonl", ("text", "label"))
    texts = [r["text"] for r in domain_rows]
    probs = DomainClassifier(trained[0] / "domain.pt").score_many(texts, embedder.encode(texts))
    assert np.mean([DOMAINS[i] == r["label"] for i, r in zip(probs.argmax(1), domain_rows)]) >= 0.9
    rows = read_jsonl(small_data / "escalation.jsonl", ("previous_answer", "text", "label"))
    report = evaluate_escalation(rows, embedder, EscalationDetector(trained[0] / "escalation.pt"), 0.5)
    assert report["f1"] >= 0.9 and report["fpr"] <= 0.1


def test_training_is_seeded(trained):
    for name in ("domain.pt", "escalation.pt"):
        first, second = (torch.load(out / name, weights_only=True) for out in trained[:2])
        for part in ("text", "state"):
            assert first[part].keys() == second[part].keys()
            for key, value in first[part].items():
                assert torch.equal(value, second[part][key]) if torch.is_tensor(value) else value == second[part][key]


def test_holdout_scores_a_stratified_share_and_writes_nothing(small_data, tmp_path, capsys):
    out = tmp_path / "weights"
    assert train.main(["--data", str(small_data), "--out", str(out), "--holdout", "0.25"]) == 0
    assert not out.exists()
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    # what it is doing, as it goes (QA 24: minutes of silence), on stderr beside the report
    stages = ["read 96 domain, 16 follow-up, 60 escalation examples", "encoding", "fitting the domain head",
              "fitting the escalation head"]
    assert [captured.err.find(stage) for stage in stages] == sorted(captured.err.find(s) for s in stages)
    assert all(stage in captured.err for stage in stages), captured.err
    assert set(report["domain"]) == {"accuracy", "macro_f1", "per_label", "confusion"}
    held = {label: sum(row.values()) for label, row in report["domain"]["confusion"].items()}
    assert held == dict.fromkeys(DOMAINS, round(PER_DOMAIN * 0.25))  # the same share of every label
    assert set(report["escalation"]) >= {"f1", "precision", "recall", "fpr"}
    assert 0.0 <= report["followups_accuracy"] <= 1.0 and 0.0 <= report["escalation"]["f1"] <= 1.0


def test_the_escalation_features_built_in_chunks_are_those_of_all_rows_at_once(small_data):
    """router.train writes the escalation features chunk by chunk into one array, so the whole
    (rows, layers, DIM) stacks of messages and answers (0.7 GB over the training rows) are never
    made: the features must be bit for bit those one call over all the rows gives."""
    from router.evaluate import escalation_layers
    from router.heads import answers_asked, escalation_dense

    rows = read_jsonl(small_data / "escalation.jsonl", ("previous_answer", "text", "label"))[:10]
    rows[3] = {**rows[3], "previous_answer": ""}  # no answer: its blocks are zeros, as in the app
    embedder = Embedder(cache_size=64)
    texts, dense = train.escalation_inputs(embedder, rows, chunk=3)  # a last chunk of one row
    _, layers, previous = escalation_layers(rows, embedder)
    expected = escalation_dense(layers, previous, answers_asked([r["previous_answer"] for r in rows]))
    assert texts == [r["text"] for r in rows]
    assert dense.dtype == np.float32 and dense.flags.c_contiguous and np.array_equal(dense, expected)


def test_training_asks_for_no_huge_pages(small_data, tmp_path):
    """numpy asks Linux for huge pages for its large arrays; where the kernel compacts memory on the
    spot to make them (transparent_hugepage/defrag "madvise", a common default), a new GB took up to
    9 s to touch instead of ~0.5 s. router.train turns that off for its own process."""
    from numpy._core.multiarray import _set_madvise_hugepage

    _set_madvise_hugepage(True)
    assert train.main(["--data", str(small_data), "--out", str(tmp_path / "weights")]) == 0
    assert _set_madvise_hugepage(True) is False  # returns the setting router.train left


def test_the_escalation_fit_holds_the_character_ngrams_harder_and_the_word_ngrams_looser():
    """char_l2 and word_l2 weigh the L2 on the character and the word n-grams' weights only: the first
    shrink, so on a short message they no longer outweigh the meaning; the others take up what they carried."""
    rng = np.random.default_rng(0)
    texts = ["that is wrong", "still broken", "thanks a lot", "works now 🙂", "you made it worse", "great, ty",
             "no, the other file", "perfect"] * 4
    labels = np.array([1, 1, 0, 0, 1, 0, 1, 0] * 4)
    dense = rng.normal(size=(len(texts), 6)).astype(np.float32)
    dense[:, 0] += labels  # one dense feature that carries the label

    def norms(char_l2: float, word_l2: float = 1.0) -> tuple[float, float, float]:
        head = train.fit(texts, dense, labels, 1, seed=0, char_l2=char_l2, word_l2=word_l2)
        weight, n_word = head.linear.weight.detach()[0], len(head.text.word.vocabulary_)
        return tuple(float(weight[s].norm()) for s in (slice(0, n_word), slice(n_word, head.text.size),
                                                        slice(head.text.size, None)))

    (word_1, char_1, dense_1), (word_k, char_k, dense_k) = norms(1.0), norms(1000.0)
    assert char_k < 0.05 * char_1
    assert word_k > word_1 and dense_k > 0.5 * dense_1  # the others take up what the characters carried
    word_looser, char_looser, _ = norms(1000.0, word_l2=0.5)
    assert word_looser > word_k and char_looser < 0.05 * char_1


@pytest.mark.parametrize("share", ["-0.5", "1.0", "nan", "a fifth"])
def test_a_holdout_share_is_checked_before_anything_is_read(tmp_path, capsys, share):
    """QA: --holdout -0.5 trained and wrote the heads (into router/weights without --out), though a held-out
    run writes nothing; 1.0 and nan were tracebacks after the encode."""
    with pytest.raises(SystemExit) as stopped:
        train.main(["--out", str(tmp_path / "w"), "--holdout", share])
    assert stopped.value.code == 2 and f"argument --holdout: a share from 0 to 0.9, not {share}" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()

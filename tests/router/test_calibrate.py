"""python -m router.calibrate: τp as the perplexity percentile that sends the chosen share to base,
measured on the demo base model and written into the profile, or printed for a base of your own."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from gradio_client import Client

from models.manifest import MANIFEST_PATH, get_profile
from router.calibrate import MIN_PROMPTS, refusal, tau_for_share
from router.decision import Thresholds
from tests.launcher import running_app

ROOT = Path(__file__).resolve().parents[2]


def test_tau_sends_the_share_asked_for():
    values = [float(v) for v in range(1, 101)]
    assert tau_for_share(values, 0.5) == 50.0
    assert tau_for_share(values, 0.3) == 30.0
    assert sum(v <= tau_for_share(values, 0.73) for v in values) == 73
    with pytest.raises(ValueError, match="between 0 and 1"):
        tau_for_share(values, 1.0)


def test_calibration_writes_tau_p_into_the_profile(tmp_path, demo_models_dir):
    manifest = tmp_path / "manifest.json"
    shutil.copy(MANIFEST_PATH, manifest)
    done = subprocess.run(
        [sys.executable, "-m", "router.calibrate", "--manifest", str(manifest), "--models-dir", str(demo_models_dir),
         "--limit", "60", "--share", "0.4"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "60 prompts" in done.stdout and "sends 40% of prompts to base (asked 40%)" in done.stdout
    router = json.loads(manifest.read_text())["profiles"]["demo"]["settings"]["router"]
    assert router["tau_p_share"] == 0.4 and router["tau_p"] > 1.0
    assert router["tau_p_base_sha256"] == get_profile("demo").file("base").sha256
    thresholds = Thresholds.from_settings(get_profile("demo", manifest).settings)
    assert thresholds.calibrated and thresholds.tau_p == router["tau_p"]


def test_the_demo_profile_ships_calibrated():
    settings = get_profile("demo").settings
    assert Thresholds.from_settings(settings).calibrated
    assert settings["router"]["tau_p_base_sha256"] == get_profile("demo").file("base").sha256


def test_your_own_base_is_calibrated_and_started_with_its_tau_p(tmp_path, demo_set):
    """--model files have no profile to write τp into: calibrate prints it and the command that uses it
    (the start's warning sent people to `--profile custom`, which does not exist)."""
    done = subprocess.run([sys.executable, "-m", "router.calibrate", "--model", str(demo_set["base"]), "--limit", "30"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    start = re.search(r"python launch\.py --model (\S+) --tau-p ([0-9.]+)", done.stdout)
    assert start and start[1] == str(demo_set["base"]), done.stdout
    tau = float(start[2])
    with running_app(tmp_path / "data", tmp_path / "models", "--model", str(demo_set["base"]), "--tau-p", start[2]) as (url, db):
        Client(url, verbose=False).predict("Write a Python function that reverses a string.", api_name="/chat")
    assert sqlite3.connect(db).execute("select tau_p, tau_p_calibrated from decisions").fetchall() == [(tau, 1)]
    assert "no calibrated perplexity threshold" not in (tmp_path / "data" / "launch.log").read_text()


@pytest.mark.parametrize("args, message", [
    (("--share", "1.5"), "argument --share: a share is more than 0 and less than 1, not 1.5"),
    (("--share", "0"), "argument --share: a share is more than 0 and less than 1, not 0"),
    (("--share", "half"), "argument --share: a share is more than 0 and less than 1, not half"),
    (("--limit", "0"), "argument --limit: a whole number, at least 1, not 0"),
    (("--limit", "-3"), "argument --limit: a whole number, at least 1, not -3"),
])
def test_its_numbers_are_checked_before_anything_is_scored(tmp_path, args, message):
    """QA: --share 1.5 was refused with a traceback after every prompt was scored (hours on a 7B);
    --limit 0 scored them all and --limit -3 all but three."""
    manifest = tmp_path / "manifest.json"  # a copy, and --dry-run: the code before wrote models/manifest.json
    shutil.copy(MANIFEST_PATH, manifest)
    done = subprocess.run([sys.executable, "-m", "router.calibrate", "--models-dir", str(tmp_path / "models"),
                           "--manifest", str(manifest), "--dry-run", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "models").exists()  # nothing built, nothing scored


def test_prompts_it_cannot_score_are_left_out_and_counted(tmp_path, demo_models_dir):
    """QA: a prompt longer than the context ended the run with a traceback, after every prompt before it
    was scored (hours on a 7B); an empty one was scored as perplexity 1."""
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                            ["Write a Python function that reverses a string.", "word " * 6000, "   ",
                             "What is 17 times 23?"]))
    done = subprocess.run([sys.executable, "-m", "router.calibrate", "--models-dir", str(demo_models_dir), "--dry-run",
                           "--data", str(data)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "2 prompts in" in done.stdout
    assert "left out: 1 longer than the context (prompt 2), 1 empty (prompt 3)" in done.stdout
    assert "too few to write" in done.stdout  # a dry run shows it, and says so


@pytest.mark.parametrize("target", ["profile", "model"])
def test_a_tau_p_from_too_few_prompts_is_neither_written_nor_offered(tmp_path, demo_models_dir, demo_set, target):
    """QA 24 #4: one prompt wrote "τp = 5525.5151 sends 100% of prompts to base (asked 50%)" into the manifest,
    and every message went to base from then on."""
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"text": "What is 17 times 23?"}) + "\n")
    manifest = tmp_path / "manifest.json"
    shutil.copy(MANIFEST_PATH, manifest)
    where = ["--model", str(demo_set["base"])] if target == "model" else ["--manifest", str(manifest)]
    done = subprocess.run([sys.executable, "-m", "router.calibrate", "--models-dir", str(demo_models_dir),
                           "--data", str(data), *where], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"1 prompt is too few: at least {MIN_PROMPTS}" in done.stderr and "--data" in done.stderr
    assert manifest.read_bytes() == MANIFEST_PATH.read_bytes() and "start with" not in done.stdout


@pytest.mark.parametrize("texts", [["hello there"], ["hello there", "What is 17 times 23?"]])
def test_a_tau_p_from_repeated_prompts_is_not_written(tmp_path, demo_models_dir, texts):
    """QA 25 #4: thirty copies of one prompt passed the count, and wrote "τp = 10156.7203 sends 100% of prompts to
    base (asked 50%)": every message went to base from then on. QA 26 #5: two prompts fifteen times each wrote a
    τp, and the thirty copies were said to "score only 2 different perplexities" (the last digits of one)."""
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts) * (MIN_PROMPTS // len(texts)))
    manifest = tmp_path / "manifest.json"
    shutil.copy(MANIFEST_PATH, manifest)
    done = subprocess.run([sys.executable, "-m", "router.calibrate", "--models-dir", str(demo_models_dir),
                           "--data", str(data), "--manifest", str(manifest)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert (f"the {MIN_PROMPTS} prompts are only {len(texts)} different one{'s' * (len(texts) > 1)}, too few: at least "
            f"{MIN_PROMPTS} different prompts") in done.stderr, done.stderr
    assert manifest.read_bytes() == MANIFEST_PATH.read_bytes()


def test_a_tau_p_that_misses_the_share_asked_is_refused():
    """Different prompts that tie on a few perplexities: τp cannot send the share asked, and says how many
    different perplexities there are, as shown (2 decimals: not the last digits of a float)."""
    values = [7.0] * 25 + [7.0 + 1e-9] * 3 + [9.5, 12.25]
    said = refusal(values, [f"prompt {i}" for i in range(30)], 0.5, dry_run=False)
    assert said.startswith("τp 7.0000 sends 83% of these prompts to base, not the 50% asked: the 30 prompts score "
                           "only 3 different perplexities"), said
    assert refusal(values, [f"prompt {i}" for i in range(30)], 0.5, dry_run=True) is None
    assert refusal(list(range(30)), [f"prompt {i}" for i in range(30)], 0.5, dry_run=False) is None
    # QA 27: one prompt in thirty cases and spacings is one prompt
    variants = [("Hello World" if i % 2 else "hello world") + " " * i for i in range(30)]
    assert "the 30 prompts are only 1 different one, too few" in refusal(list(range(30)), variants, 0.5, False)

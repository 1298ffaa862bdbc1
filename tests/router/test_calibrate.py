"""python -m router.calibrate: τp as the perplexity percentile that sends the chosen share to base,
measured on the demo base model and written into the profile."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models.manifest import MANIFEST_PATH, get_profile
from router.calibrate import tau_for_share
from router.decision import Thresholds

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

"""The app as a user meets it: `python launch.py` in a subprocess on the demo set, on a free port
(tests/launcher.py; `launch_app` is in tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.launcher import ROOT, AppProcess, free_port, running_app


@pytest.fixture
def app(tmp_path, demo_models_dir):
    with running_app(tmp_path, demo_models_dir) as started:
        yield started


@pytest.fixture
def space(tmp_path):
    """launch.py as a HuggingFace Space starts it: SPACE_ID and PORT set, a persistent volume, no
    data directory or profile flags given (COGUMI_PROFILE=demo: no network here)."""
    volume, port = tmp_path / "volume", free_port()
    volume.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "COGUMI_DATA_DIR"}
    env.update(SPACE_ID="cogumi/chat", PORT=str(port), COGUMI_SPACES_PERSISTENT_DIR=str(volume), COGUMI_PROFILE="demo")
    with open(tmp_path / "space.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "launch.py", "--no-browser"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    app = AppProcess(proc, f"http://127.0.0.1:{port}/", volume / "cogumi" / "sessions.db", tmp_path / "space.log")
    try:
        app.wait_ready(timeout=120)
        yield SimpleNamespace(url=app.url, port=port, volume=volume)
    finally:
        app.stop()

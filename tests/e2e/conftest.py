"""The app as a user meets it: `python launch.py` in a subprocess on the demo set, on a free port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(data_dir: Path, models_dir: Path, *args: str):
    """launch.py on a free port; yields (url, sessions.db path) once it answers."""
    port = free_port()
    log = open(data_dir / "launch.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "launch.py", "--no-browser", "--port", str(port), "--models-dir", str(models_dir), *args],
        cwd=ROOT, env={**os.environ, "COGUMI_DATA_DIR": str(data_dir)}, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"launch.py did not come up:\n{log.read()}")
                time.sleep(0.3)
        yield url, data_dir / "sessions.db"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def launch_app():
    """running_app, for tests that start the app with their own files or flags."""
    return running_app


@pytest.fixture
def app(tmp_path, demo_models_dir):
    with running_app(tmp_path, demo_models_dir) as started:
        yield started

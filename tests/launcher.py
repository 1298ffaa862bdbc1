"""The app as a user starts it: `python launch.py --no-browser --port P --models-dir DIR` in a
subprocess, with COGUMI_DATA_DIR pointing at a test folder. Shared by tests/e2e and
tests/reliability (the `launch_app` fixture in tests/conftest.py hands out `running_app`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AppProcess:
    """One `python launch.py` run; its output goes to data_dir/log_name."""
    proc: subprocess.Popen
    url: str
    db_path: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> None:
        """Until the address answers (the chat, or the startup page a first start shows while it
        downloads); fails the test with the app's output if it exits or hangs."""
        self._wait(lambda title: True, timeout)

    def wait_for_chat(self, timeout: float = 90) -> None:
        """Until the chat itself answers, not the startup page."""
        from app.startup import TITLE as STARTING

        self._wait(lambda title: title != STARTING, timeout)

    def _wait(self, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "config", timeout=2) as response:
                    if done(json.load(response).get("title")):
                        return
            except (OSError, ValueError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"launch.py did not come up (exit {self.proc.poll()}):\n{self.log()}")
            time.sleep(0.3)

    def kill(self) -> None:
        """kill -9: no handler, no cleanup, no finally blocks."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=20)


def start_app(data_dir: Path, models_dir: Path, *args: str, log_name: str = "launch.log",
              port: int | None = None) -> AppProcess:
    """Start launch.py on a free port (or `port`: the app started again where a page knows it) and return at
    once (see AppProcess.wait_ready, wait_for_chat)."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / log_name
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "launch.py", "--no-browser", "--port", str(port), "--models-dir", str(models_dir), *args],
            cwd=ROOT, env={**os.environ, "COGUMI_DATA_DIR": str(data_dir)}, stdout=log, stderr=subprocess.STDOUT,
        )
    return AppProcess(proc, f"http://127.0.0.1:{port}/", data_dir / "sessions.db", log_path)


@contextlib.contextmanager
def running_app(data_dir: Path, models_dir: Path, *args: str, log_name: str = "launch.log"):
    """launch.py on a free port; yields (url, sessions.db path) once the chat answers, stops it after."""
    app = start_app(data_dir, models_dir, *args, log_name=log_name)
    try:
        app.wait_for_chat()
        yield app.url, app.db_path
    finally:
        app.stop()

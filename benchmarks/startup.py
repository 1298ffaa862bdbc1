"""Start-up: from `python launch.py` to the chat answering, on the demo set already on disk.

Each run starts launch.py on a free port with a new sessions.db and the same model folder (built by the
warm-up run, which also exports the router's encoder where it is missing), and polls /config until the
chat itself answers. With checkouts given (other clones or worktrees of this repository, e.g. one at the
commit before a change), their runs alternate with this one's, so the machine's drift falls on both; the
ratio is each one's median over this checkout's.

    .venv/bin/python benchmarks/startup.py [--runs 8] [CHECKOUT ...]

The last line is JSON: startup_s (this checkout's median) and, per checkout given, its median and ratio.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))  # run from anywhere

from app.startup import TITLE as STARTING  # noqa: E402  (the page a first start shows while it downloads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_seconds(checkout: Path, models: Path, data: Path) -> float:
    """One start: seconds until /config answers with the chat's title."""
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "launch.py", "--no-browser", "--port", str(port), "--models-dir",
                             str(models), "--db", str(data / "sessions.db")], cwd=checkout,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"launch.py in {checkout} exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as response:
                    if json.load(response).get("title") != STARTING:
                        return time.perf_counter() - started
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="*", type=Path, help="other checkouts to time against this one")
    parser.add_argument("--runs", type=int, default=8, help="starts per checkout (default 8)")
    args = parser.parse_args()
    checkouts = [HERE, *(c.resolve() for c in args.checkouts)]
    times: dict[Path, list[float]] = {c: [] for c in checkouts}
    with tempfile.TemporaryDirectory(prefix="cogumi-startup-") as tmp:
        models = Path(tmp) / "models"
        for checkout in checkouts:  # warm-up: the demo set, each checkout's encoder, the disk cache
            start_seconds(checkout, models, Path(tempfile.mkdtemp(dir=tmp)))
        for run in range(args.runs):
            for checkout in checkouts[run % len(checkouts):] + checkouts[:run % len(checkouts)]:
                times[checkout].append(start_seconds(checkout, models, Path(tempfile.mkdtemp(dir=tmp))))
    base = statistics.median(times[HERE])
    print(f"{'checkout':<40}{'runs':>6}{'median s':>10}{'min s':>8}{'max s':>8}{'÷ this':>8}")
    for checkout, values in times.items():
        print(f"{str(checkout)[-40:]:<40}{len(values):>6}{statistics.median(values):>10.2f}{min(values):>8.2f}"
              f"{max(values):>8.2f}{statistics.median(values) / base:>8.3f}")
    print(json.dumps({"startup_s": round(base, 2), "runs": args.runs,
                      "others": {str(c): {"startup_s": round(statistics.median(times[c]), 2),
                                          "vs_this": round(statistics.median(times[c]) / base, 3)}
                                 for c in checkouts[1:]}}))


if __name__ == "__main__":
    main()

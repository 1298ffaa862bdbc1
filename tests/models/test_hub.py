"""Model files from the Hub: the real huggingface_hub client against a small Hub-compatible server
on this machine (HF_ENDPOINT), serving the demo files. Download, resume, digest refused, not found."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest

from models.engine import Engine
from models.errors import ModelFileError
from models.manifest import ModelFile, get_profile
from models.store import Store, hash_file
from tests.models.hub_server import HubServer

REPO = "cogumi/demo-GGUF"


@pytest.fixture
def hub(monkeypatch):
    server = HubServer()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.close()


def hub_entry(demo_set, name: str = "base", filename: str = "base.gguf") -> ModelFile:
    """The demo profile's entry for `name`, but as a plain .gguf fetched from the test Hub."""
    entry = get_profile("demo").file(name)
    return dataclasses.replace(entry, file=filename, source={"repo": REPO, "filename": filename, "revision": "main"})


def test_a_missing_file_is_downloaded_verified_and_used(hub, demo_set, tmp_path):
    hub.add(REPO, "base.gguf", demo_set["base"].read_bytes())
    store = Store(tmp_path / "models", progress=False)
    entry = hub_entry(demo_set)
    path = store.ensure("hubtest", entry)
    assert path == tmp_path / "models" / "hubtest" / "base.gguf" and path.is_symlink()
    assert (tmp_path / "models" / "hub") in path.resolve().parents  # used in place from the Hub cache
    assert hash_file(path) == entry.sha256 and store.is_ready("hubtest", entry)
    gets = [r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]
    assert len(gets) == 1
    assert store.ensure("hubtest", entry) == path and [r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]] == gets  # no refetch
    *pieces, stats = Engine(path, n_ctx=256).generate([{"role": "user", "content": "hi"}], max_tokens=8)
    assert stats.tokens > 0


def test_a_dropped_connection_resumes_where_it_stopped(hub, tmp_path):
    """The network drops 15 MB into a 24 MB file: huggingface_hub asks again for the bytes after the
    last whole 10 MiB chunk it kept, not for the whole file, and the result passes its digest."""
    data = os.urandom(24 << 20)
    hub.add(REPO, "big.gguf", data)
    hub.cut_first_get_at = 15 << 20
    entry = ModelFile(name="base", role="base", file="big.gguf", sha256=hashlib.sha256(data).hexdigest(),
                      size=len(data), source={"repo": REPO, "filename": "big.gguf"})
    path = Store(tmp_path / "models", progress=False).ensure("hubtest", entry)
    assert hash_file(path) == entry.sha256
    ranges = [r[2] for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]
    assert ranges == [None, f"bytes={10 << 20}-"], ranges


def test_bytes_that_fail_their_digest_are_refused_and_not_kept(hub, demo_set, tmp_path):
    data = bytearray(demo_set["base"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    hub.add(REPO, "base.gguf", bytes(data))
    store = Store(tmp_path / "models", progress=False)
    entry = hub_entry(demo_set)
    with pytest.raises(ModelFileError, match=f"SHA-256 mismatch: expected {entry.sha256}") as err:
        store.ensure("hubtest", entry)
    assert "base.gguf" in str(err.value)
    assert not (tmp_path / "models" / "hubtest" / "base.gguf").exists()
    blobs = list((tmp_path / "models" / "hub").rglob("blobs/*"))
    assert blobs == [], blobs  # the next start downloads again instead of trusting these bytes


def test_a_compressed_file_on_the_hub_is_decompressed_and_verified(hub, demo_models_dir, demo_set, tmp_path):
    hub.add(REPO, "base.gguf.zst", (demo_models_dir / "demo" / "base.gguf.zst").read_bytes())
    entry = hub_entry(demo_set, filename="base.gguf.zst")
    path = Store(tmp_path / "models", progress=False).ensure("hubtest", entry)
    assert path.name == "base.gguf" and not path.is_symlink() and hash_file(path) == entry.sha256


def test_a_file_the_hub_does_not_have_is_named(hub, demo_set, tmp_path):
    with pytest.raises(ModelFileError, match=f"{REPO}/base.gguf@main is not on the Hub"):
        Store(tmp_path / "models", progress=False).ensure("hubtest", hub_entry(demo_set))

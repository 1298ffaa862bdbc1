"""Model files from the HuggingFace Hub, through huggingface_hub: downloaded into its cache
(resumable: an interrupted transfer continues from its `.incomplete` file), with tqdm progress on
the terminal and, through `on_progress`, in the UI. The store verifies what arrives (SHA-256)
before llama.cpp sees it; nothing here trusts the transfer.

HF_ENDPOINT picks another Hub-compatible server (the tests serve the demo files themselves);
HF_HUB_OFFLINE=1 forbids the network."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from models.errors import ModelFileError
from models.manifest import ModelFile

Progress = Callable[[str, int, int], None]  # (what, bytes done, bytes in all)


def _progress_bar(on_progress: Progress | None, label: str) -> type[tqdm]:
    """A tqdm that also reports each update to on_progress (the UI's startup page) as `label`."""

    class Bar(tqdm):
        def update(self, n=1):
            shown = super().update(n)
            if on_progress and self.total:
                on_progress(label, int(self.n), int(self.total))
            return shown

    return Bar


def fetch_command(profile: str, entry: ModelFile, cache_dir: Path) -> str:
    """The command that fetches the file by hand into the profile's folder of the model cache."""
    source = entry.source or {}
    revision = source.get("revision")
    return (f"{_hf()} download {source.get('repo')} {source.get('filename')}"
            f"{f' --revision {revision}' if revision else ''} --local-dir {cache_dir.parent / profile}")


def _hf() -> str:
    """huggingface_hub's hf command, as it runs from here: the venv's own, by its path, when the venv is not
    activated (README runs .venv/bin/python; a plain "hf" was "command not found", QA 27)."""
    beside = Path(sys.executable).with_name("hf")
    found = shutil.which("hf")
    return "hf" if not beside.is_file() or (found and Path(found).resolve() == beside.resolve()) else str(beside)


def download(profile: str, entry: ModelFile, cache_dir: Path, on_progress: Progress | None = None) -> Path:
    """The file's path in the Hub cache, downloading what is missing. Raises ModelFileError naming
    the file and how to get it when it cannot be had (offline, not found, refused)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RemoteEntryNotFoundError, \
        RepositoryNotFoundError, RevisionNotFoundError

    source = entry.source or {}
    repo, filename, revision = source.get("repo"), source.get("filename"), source.get("revision")
    where = f"{repo}/{filename}" + (f"@{revision}" if revision else "")
    how = (f"Connect to the network and start again, or fetch it yourself: {fetch_command(profile, entry, cache_dir)} "
           f"— then start again.")
    _remove_stale_partials(cache_dir)
    try:
        path = hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir,
                               endpoint=os.environ.get("HF_ENDPOINT") or None, tqdm_class=_progress_bar(on_progress, entry.file))
    except LocalEntryNotFoundError as exc:  # offline (HF_HUB_OFFLINE or no network) and not in the cache
        raise ModelFileError(f"{entry.file} ({entry.name} of profile {profile!r}) is not on disk and cannot be "
                             f"downloaded from {where}: no network (or HF_HUB_OFFLINE=1). {how}") from exc
    except (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError) as exc:
        raise ModelFileError(f"{entry.file} ({entry.name} of profile {profile!r}): {where} is not on the Hub "
                             f"({type(exc).__name__}). The manifest entry is wrong; check models/manifest.json.") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ModelFileError(f"{entry.file} ({entry.name} of profile {profile!r}): downloading {where} failed "
                             f"({exc}). {how}") from exc
    return Path(path)


def forget(path: Path) -> None:
    """Remove a downloaded file from the Hub cache (its snapshot link and its blob), so the next
    start downloads it again instead of reusing bytes that failed their check."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path:
        blob.unlink(missing_ok=True)


STALE_AFTER_S = 120  # a download in progress writes every few seconds; an older partial file is orphaned


def _remove_stale_partials(cache_dir: Path) -> None:
    """huggingface_hub resumes a dropped transfer within one download, but a partial file left by a
    killed app has a name of its own that no later download reuses: remove such leftovers."""
    now = time.time()
    for partial in cache_dir.glob("*/blobs/*.incomplete"):
        try:
            if now - partial.stat().st_mtime > STALE_AFTER_S:
                partial.unlink()
        except OSError:
            pass

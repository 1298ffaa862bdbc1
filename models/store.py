"""The model store: turns a manifest entry into a verified GGUF on disk that llama.cpp may read.

A `.gguf.zst` is decompressed once, streaming, with its SHA-256 computed on the way, into a temp
file that is renamed into place only when the digest matches; the digest is then recorded beside
the file (`NAME.gguf.sha256`), so the next launch reuses it without decompressing or rehashing.
`verify=True` rehashes a cached file. A failure names the file, the expected and the actual digest,
and leaves no partial file; an earlier good file is never touched by a failed attempt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import zstandard
from tqdm import tqdm

from models.errors import ModelFileError
from models.manifest import ModelFile

CHUNK = 1 << 22         # 4 MiB: large enough that zstd and SHA-256 run at full speed per call
MAX_IN_FLIGHT = 8       # chunks decompressed ahead of the hash and the write: 32 MiB of memory
SYNC_EVERY = 1 << 24    # flush to disk every 16 MiB, overlapped with decompression (0.59x -> ~0.9x of the zstd CLI)
# What to do about a model file that is damaged, cut short or not the one named: right for a profile's
# file (downloaded again), the demo set's (rebuilt) and your own (QA: "copy or download it again" named
# nothing that could be done for the demo set).
REDO = ("Delete it and start again: a profile's file is downloaded again, and the demo set's is rebuilt; a file of "
        "your own, copy it again.")


class Store:
    def __init__(self, root: Path, progress: bool = True, on_progress=None):
        self.root = Path(root)
        self.progress = progress
        self.on_progress = on_progress  # (what, done, total) for downloads, e.g. the UI's startup page

    def hub_cache(self) -> Path:
        return self.root / "hub"

    def folder(self, profile: str) -> Path:
        return self.root / profile

    def source_path(self, profile: str, entry: ModelFile) -> Path:
        return self.folder(profile) / entry.file

    def model_path(self, profile: str, entry: ModelFile) -> Path:
        """Where llama.cpp reads the entry: a plain .gguf where it is, a .gguf.zst decompressed into
        the profile's folder. entry.file may be a path of the user's own (--model FILE.gguf.zst, no
        digest): its copy's name then carries a digest of that path, so two folders' model.gguf.zst
        never share one copy."""
        if not entry.file.lower().endswith(".zst"):  # QA 32 #3: MODEL.GGUF.ZST, from a FAT stick
            return self.source_path(profile, entry)
        name = Path(entry.file).name[:-len(".zst")]
        if entry.sha256 is None:
            where = hashlib.sha256(str(self.source_path(profile, entry).resolve()).encode()).hexdigest()[:12]
            name = f"{name[:-len('.gguf')] if name.lower().endswith('.gguf') else name}.{where}.gguf"
        return self.folder(profile) / name

    def is_ready(self, profile: str, entry: ModelFile) -> bool:
        """True when the verified GGUF is in place (by its recorded digest and size). With no digest
        in the manifest (the user's own file), a copy made from its source as it is now (the size and
        modification time recorded then): a file copied over it keeping an older date is new too."""
        path = self.model_path(profile, entry)
        if entry.sha256 is None:
            source = self.source_path(profile, entry)
            identity = _identity(source)
            return (source != path and identity is not None and _recorded_digest(path) is not None
                    and _recorded_source(path) == identity)
        return _recorded_digest(path) == entry.sha256 and _size(path) == entry.size

    def needs_download(self, profile: str, entry: ModelFile) -> bool:
        """True when the entry is on the Hub and neither it nor its verified GGUF is on disk."""
        return bool(entry.source) and not self.source_path(profile, entry).exists() and not self.is_ready(profile, entry)

    def ensure(self, profile: str, entry: ModelFile, verify: bool = False) -> Path:
        """Return the path of the verified GGUF for this entry, decompressing it if needed."""
        path = self.model_path(profile, entry)
        for stale in path.parent.glob(f".{path.name}.*.partial"):  # left by a run killed mid-decompress
            stale.unlink(missing_ok=True)
        if self.is_ready(profile, entry):
            written_since = _written_since_verified(path)  # a tool, a bad copy: hash it again, once
            if not verify and not written_since:
                return path
            actual = hash_file(path, progress=self.progress)
            if actual == (entry.sha256 or _recorded_digest(path)):
                if written_since:
                    with contextlib.suppress(OSError):  # a read-only folder: checked again next time
                        _write_digest(path, actual)
                return path
            try:
                _digest_path(path).unlink(missing_ok=True)  # the cached copy changed on disk: redo it
            except OSError as exc:
                raise ModelFileError(f"{path}: changed on disk, and its folder cannot be written to make it again "
                                     f"({exc}). Make the folder writable, or choose another with --models-dir.") from exc
        source = self.source_path(profile, entry)
        if self.needs_download(profile, entry):  # not on disk: from the Hub, into its cache
            from models import hub

            downloaded = hub.download(profile, entry, self.hub_cache(), self.on_progress)
            try:
                if source != path:  # a .gguf.zst on the Hub
                    decompress_verified(downloaded, path, entry.sha256, entry.size, progress=self.progress)
                    return path
                actual = hash_file(downloaded, progress=self.progress)
                if actual != entry.sha256:
                    raise ModelFileError(_mismatch(downloaded, entry.sha256, actual))
            except ModelFileError:
                hub.forget(downloaded)  # refused bytes are not kept for the next start to reuse
                raise
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            path.symlink_to(downloaded.resolve())  # the cache's blob, used in place
            _write_digest(path, actual)
            return path
        if source == path and entry.sha256 is None:  # the user's own .gguf: no digest to check it against
            if not path.is_file():
                what = "is a directory, not a GGUF model file" if path.is_dir() else "model file not found"
                raise ModelFileError(f"{entry.name} {'modifier' if entry.role == 'modifier' else 'model'} {path}: {what}.")
            return path
        if source == path:  # a plain .gguf: nothing to decompress, only check it
            return self._verify_plain(path, entry)
        if not source.is_file():
            raise ModelFileError(f"{source}: model file not found ({entry.name} of profile {profile!r}).")
        identity = _identity(source)
        decompress_verified(source, path, entry.sha256, entry.size, progress=self.progress)
        if entry.sha256 is None:
            _write_beside(path, ".source", identity)
        return path

    def _verify_plain(self, path: Path, entry: ModelFile) -> Path:
        if not path.is_file():
            raise ModelFileError(f"{path}: model file not found ({entry.name}).")
        actual = hash_file(path, progress=self.progress)
        if actual != entry.sha256:
            raise ModelFileError(_mismatch(path, entry.sha256, actual))
        _write_digest(path, actual)
        return path


def decompress_verified(source: Path, target: Path, sha256: str | None, size: int | None, progress: bool = True) -> None:
    """Stream-decompress `source` into `target`, hashing as it goes; rename into place only on a
    digest match. Raises ModelFileError naming the file, and leaves no partial file behind."""
    digest = hashlib.sha256()
    written, head, tmp = 0, b"", None
    try:
        promised = _content_size(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_path(target)
        with open(source, "rb") as fin, open(tmp, "xb", buffering=0) as fout, tqdm(
            total=source.stat().st_size, unit="B", unit_scale=True, desc=f"decompress {source.name}",
            disable=not progress, leave=False,
        ) as bar, ThreadPoolExecutor(1) as hasher, ThreadPoolExecutor(1) as writer:
            reader = zstandard.ZstdDecompressor().stream_reader(fin, read_size=CHUNK, closefd=False,
                                                                read_across_frames=True)
            # A pipeline: this thread decompresses while one worker hashes and one writes (zstd,
            # hashlib and file writes all release the GIL; a one-thread executor keeps order). The
            # writer flushes to disk as it goes, so the final fsync has little left to wait for.
            in_flight: deque = deque()
            while chunk := reader.read(CHUNK):
                head += chunk[:4 - len(head)]  # the GGUF magic, once 4 bytes are in
                in_flight.append((hasher.submit(digest.update, chunk), writer.submit(_write_durably, fout, chunk)))
                if len(in_flight) > MAX_IN_FLIGHT:
                    for job in in_flight.popleft():
                        job.result()
                written += len(chunk)
                bar.update(fin.tell() - bar.n)
            for jobs in in_flight:
                for job in jobs:
                    job.result()
            os.fsync(fout.fileno())
        actual = digest.hexdigest()
        if promised is not None and written != promised:  # zstd stops without a word where the data does
            raise ModelFileError(f"{source}: truncated: it decompresses to {written:,} of the {promised:,} bytes its "
                                 f"header promises. {REDO}")
        if size is not None and written != size:
            raise ModelFileError(
                f"{source}: decompressed to {written:,} bytes, expected {size:,} (truncated or wrong file); "
                f"expected sha256 {sha256}, actual {actual}. {REDO}"
            )
        if sha256 is not None and actual != sha256:
            raise ModelFileError(_mismatch(source, sha256, actual))
        if head != b"GGUF":  # with no digest to check (the user's own file), at least the kind of file
            what = "nothing" if not head else f"a file that starts with {head!r}, not b'GGUF'"
            raise ModelFileError(f"{source}: decompresses to {what}: not a GGUF model file.")
        os.replace(tmp, target)
        _write_digest(target, actual)
    except OSError as exc:  # disk full, read-only folder, ...
        raise ModelFileError(f"{target}: could not write the decompressed model ({exc}). Free disk space "
                             f"or choose another folder with --models-dir.") from exc
    except zstandard.ZstdError as exc:
        raise ModelFileError(
            f"{source}: its zstd data is damaged ({exc}): the file is corrupt or truncated. {REDO}"
        ) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def partial_path(final: Path, kind: str = "") -> Path:
    """A name, not yet a file, for a temporary file beside `final`: .NAME.[kind]XXXXXXXX.partial, which the
    store removes at the next start where a run was killed half way (kill -9, a power cut). The caller holds
    the name before it makes the file, so a Ctrl-C or SIGTERM the moment it is made still finds it to remove:
    mkstemp handed the name back only after it had made the file, and a signal in between left it."""
    return final.parent / f".{final.name}.{kind}{secrets.token_hex(4)}.partial"


ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE = 0x184D2A50  # to 0x184D2A5F: a frame of metadata that decoders skip (pzstd writes them)


def _content_size(source: Path) -> int | None:
    """The decompressed size the zstd frames' headers state (None where one does not), after checking
    that the frames reach exactly to the end of the file. The streaming decoder says nothing about a
    file cut inside its last frame's checksum, or about bytes after its last frame: only the blocks'
    own headers show where the data ends (3 bytes each, one per ≤128 KiB of content)."""
    end, total = source.stat().st_size, 0
    if end == 0:
        raise ModelFileError(_not_zstd(source, b""))
    with open(source, "rb") as f:
        at = 0
        while at < end:
            f.seek(at)
            head = f.read(18)  # a frame header's largest size
            magic = int.from_bytes(head[:4], "little")
            if magic & 0xFFFFFFF0 == SKIPPABLE:
                at += 8 + int.from_bytes(head[4:8], "little")
                continue
            if magic != ZSTD_MAGIC:
                if at == 0:  # QA 31 #3: "its zstd data is damaged … Delete it", of a good model misnamed
                    raise ModelFileError(_not_zstd(source, head))
                raise ModelFileError(f"{source}: {end - at:,} bytes after its zstd data are not zstd data: a "
                                     f"damaged or wrong file. {REDO}")
            try:
                frame = zstandard.get_frame_parameters(head)
                at += zstandard.frame_header_size(head)
            except zstandard.ZstdError:
                return None  # a damaged header: the decompression names it
            last = False
            while not last and at < end:
                f.seek(at)
                block = int.from_bytes(f.read(3).ljust(3, b"\0"), "little")
                last, kind, size = block & 1, (block >> 1) & 3, block >> 3
                at += 3 + (1 if kind == 1 else size)  # an RLE block holds one byte, repeated `size` times
            at += 4 * frame.has_checksum
            if not last or at > end:
                raise ModelFileError(f"{source}: truncated: its zstd data runs past the end of the file "
                                     f"({end:,} bytes). {REDO}")
            known = frame.content_size != zstandard.CONTENTSIZE_UNKNOWN and total is not None
            total = total + frame.content_size if known else None
    return total


def _not_zstd(source: Path, head: bytes) -> str:
    if not head:
        return f"{source}: is empty: not zstd-compressed data. {REDO}"
    if head[:4] == b"GGUF":
        return (f"{source}: is a GGUF model, not zstd-compressed: give it a name ending in .gguf, and it is used as it "
                f"is.")
    return (f"{source}: is not zstd-compressed (zstd data begins with the bytes 28 b5 2f fd, this file "
            f"with {head[:8]!r}): a wrong or damaged file. {REDO}")


def _write_durably(f, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[f.write(view):]
    if f.tell() % SYNC_EVERY < len(data):  # crossed a SYNC_EVERY boundary
        os.fdatasync(f.fileno()) if hasattr(os, "fdatasync") else os.fsync(f.fileno())


def hash_file(path: Path, progress: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=_size(path), unit="B", unit_scale=True, desc=f"verify {path.name}",
                                     disable=not progress, leave=False) as bar:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _mismatch(path: Path, expected: str, actual: str) -> str:
    return (f"{path}: SHA-256 mismatch: expected {expected}, actual {actual}. The file is corrupt or "
            f"not the one the manifest names. {REDO}")


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _recorded_digest(path: Path) -> str | None:
    try:
        return _digest_path(path).read_text().strip()
    except OSError:
        return None


def _written_since_verified(path: Path) -> bool:
    """Whether the file changed after its digest was recorded (bit rot that keeps the date needs --verify)."""
    try:
        return path.stat().st_mtime_ns > _digest_path(path).stat().st_mtime_ns
    except OSError:
        return True


def _write_digest(path: Path, digest: str) -> None:
    _write_beside(path, ".sha256", digest)


def _identity(source: Path) -> str | None:
    """The source file as it is now: its size and modification time (ns); None when it is not there."""
    try:
        stat = source.stat()
    except OSError:
        return None
    return f"{stat.st_size} {stat.st_mtime_ns}"


def _recorded_source(path: Path) -> str | None:
    try:
        return path.with_name(path.name + ".source").read_text().strip()
    except OSError:
        return None


def _write_beside(path: Path, suffix: str, text: str) -> None:
    beside = path.with_name(path.name + suffix)
    tmp = beside.with_name(beside.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, beside)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1

"""Model sets ("profiles") from models/manifest.json, and where data lives on disk.

One environment variable, COGUMI_DATA_DIR, names the data directory that holds sessions.db and
the model cache; by default it is the project folder, so `sessions.db` sits beside launch.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import ModelFileError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MANIFEST_PATH = Path(__file__).with_name("manifest.json")


def data_dir() -> Path:
    return Path(os.environ.get("COGUMI_DATA_DIR", PROJECT_ROOT))


def models_dir(override: Path | None = None) -> Path:
    return override or data_dir() / "model-cache"


def demo_dir(override: Path | None) -> Path:
    return models_dir(override) / "demo"


@dataclass(frozen=True)
class ModelFile:
    name: str              # "base", "draft", or the modifier's name ("code", ...)
    role: str              # "base" | "draft" | "modifier"
    file: str              # under the profile's folder; a .gguf.zst is decompressed by the store
    sha256: str | None     # of the decompressed GGUF: what llama.cpp will read (None: a slot for a file the user brings)
    size: int | None       # bytes of the decompressed GGUF, to refuse a truncated file early
    source: dict | None = None  # {"repo", "filename", "revision"} on the HuggingFace Hub, if it can be fetched
    scale: float = 1.0     # LoRA scale, modifiers only

    def __post_init__(self):  # a profiles file of the wrong shape failed far from it (load_profiles says where)
        _expect(self.name, str, "name is text")
        _expect(self.file, str, "file is text")
        _expect(self.sha256, (str, type(None)), "sha256 is text or null")
        _expect(self.size, (int, type(None)), "size is a whole number of bytes or null")
        _expect(self.source, (dict, type(None)), "source is an object or null")
        _expect(self.scale, (int, float), "scale is a number")


def _expect(value, kinds, says: str) -> None:
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{says}, not {value!r}"[:120])


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    files: tuple[ModelFile, ...]
    demo: bool = False     # built locally by models.demo instead of downloaded
    settings: dict = field(default_factory=dict)  # n_ctx and router thresholds for this model set

    def file(self, name: str) -> ModelFile | None:
        return next((f for f in self.files if f.name == name), None)

    @property
    def modifiers(self) -> tuple[ModelFile, ...]:
        return tuple(f for f in self.files if f.role == "modifier")


def load_profiles(path: Path = MANIFEST_PATH) -> dict[str, Profile]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:  # raw tracebacks before (QA)
        raise ModelFileError(f"{path}: profiles file (--manifest) is not UTF-8 text (byte {exc.start + 1:,}).") from exc
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: profiles file (--manifest) is not valid JSON (line {exc.lineno} column "
                             f"{exc.colno}: {exc.msg}).") from exc
    try:
        profiles = {}
        for name, p in raw["profiles"].items():
            _expect(p.get("files"), list, "files is a list")
            _expect(p.get("settings", {}), dict, "settings is an object")
            profiles[name] = Profile(name=name, description=p.get("description", ""),
                                     files=tuple(ModelFile(**f) for f in p["files"]), demo=p.get("demo", False),
                                     settings=p.get("settings", {}))
        return profiles
    except (KeyError, TypeError, AttributeError) as exc:
        raise ModelFileError(f"{path}: profiles file (--manifest) is not laid out as models/manifest.json is "
                             f"({type(exc).__name__}: {exc}).") from exc


def get_profile(name: str, path: Path = MANIFEST_PATH) -> Profile:
    profiles = load_profiles(path)
    if name not in profiles:
        raise ModelFileError(f"No model profile named {name!r} in {path}; known profiles: {', '.join(profiles)}")
    return profiles[name]


CUSTOM = "custom"  # the profile of --model files


def user_profile(base: Path, draft: Path | None = None, modifiers: dict[str, Path] | None = None,
                 n_ctx: int = 4096) -> Profile:
    """A profile of files the user already has (--model, --draft, --modifier NAME=FILE): plain
    .gguf files are read where they are; a .gguf.zst is decompressed once into model-cache/custom/.
    There is no digest to check them against, so the router's τp is the uncalibrated fallback."""
    files = [ModelFile("base", "base", str(Path(base).resolve()), None, None)]
    if draft:
        files.append(ModelFile("draft", "draft", str(Path(draft).resolve()), None, None))
    for name, path in (modifiers or {}).items():
        files.append(ModelFile(name, "modifier", str(Path(path).resolve()), None, None))
    return Profile(name=CUSTOM, description=f"your files: {Path(base).name}", files=tuple(files),
                   settings={"n_ctx": n_ctx})

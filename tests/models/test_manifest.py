"""models/manifest.json as launch.py reads it: a profiles file that is not what it should be is named,
with what is wrong, before anything is downloaded or built."""

from __future__ import annotations

import json

import pytest

from models.errors import ModelFileError
from models.manifest import MANIFEST_PATH, load_profiles


def demo_entry(manifest: dict) -> dict:
    return manifest["profiles"]["demo"]["files"][0]


@pytest.mark.parametrize("spoil, words", [
    (lambda m: demo_entry(m).update(size="big"), "size is a whole number of bytes or null, not 'big'"),
    (lambda m: demo_entry(m).update(sha256=7), "sha256 is text or null, not 7"),
    (lambda m: demo_entry(m).update(scale="1"), "scale is a number, not '1'"),
    (lambda m: m["profiles"]["demo"].update(settings="x"), "settings is an object, not 'x'"),
    (lambda m: m["profiles"]["demo"].update(files={}), "files is a list, not {}"),
])
def test_a_manifest_of_the_wrong_shape_is_named(tmp_path, spoil, words):
    """QA: "size": "big" was a traceback from the store (Cannot specify ',' with 's'), "settings": "x" one from
    launch.py ('str' object has no attribute 'get')."""
    manifest = json.loads(MANIFEST_PATH.read_text())
    spoil(manifest)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError) as refused:
        load_profiles(path)
    assert str(refused.value).startswith(f"{path}: profiles file (--manifest) ") and words in str(refused.value)


def test_a_manifest_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(ModelFileError, match="profiles file \\(--manifest\\) is not UTF-8 text"):
        load_profiles(path)

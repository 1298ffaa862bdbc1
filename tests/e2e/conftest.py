"""The app as a user meets it: `python launch.py` in a subprocess on the demo set, on a free port
(tests/launcher.py; `launch_app` is in tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.launcher import running_app


@pytest.fixture
def app(tmp_path, demo_models_dir):
    with running_app(tmp_path, demo_models_dir) as started:
        yield started

"""Shared fixtures: every test gets its own data directory; the demo model set is built once per
run (it takes about a second) and decompressed through the real store."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.demo import build_demo_set
from models.manifest import get_profile
from models.store import Store
from tests.launcher import running_app


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("COGUMI_DATA_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def demo_models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model-cache")
    build_demo_set(Store(root).folder("demo"))
    return root


@pytest.fixture
def launch_app():
    """running_app (tests/launcher.py): `python launch.py` in a subprocess, for tests that start the
    app with their own files or flags."""
    return running_app


@pytest.fixture(scope="session")
def demo_set(demo_models_dir) -> dict[str, Path]:
    """name (base, draft, code, reasoning, automation) → verified GGUF path."""
    store = Store(demo_models_dir, progress=False)
    return {f.name: store.ensure("demo", f) for f in get_profile("demo").files}


@pytest.fixture(scope="session")
def engine(demo_set):
    from models.engine import Engine

    return Engine(demo_set["base"], n_ctx=2048,
                  modifiers={name: (demo_set[name], 1.0) for name in ("code", "reasoning", "automation")})


@pytest.fixture(scope="session")
def small_engine(demo_set):
    """The same base with a 256-token context, for overflow tests."""
    from models.engine import Engine

    return Engine(demo_set["base"], n_ctx=256)


@pytest.fixture(scope="session")
def router_parts():
    """The committed router heads and the embedder, loaded once (torch and the MiniLM weights)."""
    from router.domain import DomainClassifier
    from router.embeddings import Embedder
    from router.escalation import EscalationDetector

    return Embedder(), DomainClassifier(), EscalationDetector()


def service_with_router(engine, router_parts, db_path):
    """ChatService with the real router (τp 0: every message passes the perplexity gate, so the
    domain decides) over the sessions.db at db_path; greedy, short replies."""
    from app.chat import ChatService, ChatSettings
    from app.memory import Memory
    from router.decision import Thresholds
    from router.perplexity import Perplexity
    from router.router import Router

    embedder, domain, escalation = router_parts
    router = Router(Perplexity(engine.score, max_tokens=48), Thresholds(tau_p=0.0, tau_e=0.5, tau_d=0.8, calibrated=True),
                    embedder, domain, escalation)
    settings = ChatSettings(temperature=0, max_tokens=48, seed=0, system_prompt="You are a test.")
    return ChatService(engine, Memory(db_path), settings, router=router)


@pytest.fixture
def routed_service(engine, router_parts, tmp_path):
    return service_with_router(engine, router_parts, tmp_path / "sessions.db")


@pytest.fixture
def routed_service_on(router_parts, tmp_path):
    """routed_service over another engine (one with a draft, say)."""
    return lambda engine: service_with_router(engine, router_parts, tmp_path / "sessions.db")

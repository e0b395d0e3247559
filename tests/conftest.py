"""Shared fixtures: the demo model set (built once) and a live demo server."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import LiveServer, start_server

# Tests never reach the internet: in-process code must not try to fetch Fooocus's style or model
# files (a test that wants a download turns it on and serves the file from 127.0.0.1).
os.environ.setdefault("FOOOCUS_ALLOW_DOWNLOADS", "0")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """The test process shares two cores with the servers it starts; spinning threads only
    slow everything down."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model set, written once per test session by the engine's own writer."""
    from engine.demo.writer import create_demo_models

    models = tmp_path_factory.mktemp("models")
    create_demo_models(models)
    return models


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, demo_models: Path) -> Iterator[LiveServer]:
    """One real server (daphne + engine worker, demo preset) shared by the API tests."""
    live = start_server(tmp_path_factory.mktemp("server"), demo_models)
    yield live
    live.stop(signal.SIGTERM)


# What needs a real server process (daphne, workers, a browser, PostgreSQL+Redis clusters) is
# the end-to-end tier; `make test-fast` runs everything else (unit and in-process tiers).
_E2E_DIRS = {"browser", "scaled", "system"}
_E2E_FIXTURES = {"server", "browser_server", "cluster", "services"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    starts_servers: dict[Path, bool] = {}
    for item in items:
        path = Path(str(item.path))
        if path not in starts_servers:
            starts_servers[path] = "start_server(" in path.read_text(encoding="utf-8")
        fixtures = set(getattr(item, "fixturenames", ()))
        if (
            _E2E_DIRS & set(path.parts)
            or _E2E_FIXTURES & fixtures
            or starts_servers[path]
            or path.name == "test_contract.py"
        ):
            item.add_marker(pytest.mark.e2e)

"""Shared fixtures of the engine tests: the demo model set (written once per test session), an
engine on it, and single-threaded torch for the modules that run the tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from engine import Engine
from engine.config import EngineConfig
from engine.demo.writer import create_demo_models
from engine.models.manager import ModelManager
from tests.engine.helpers import cpu_engine


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread for a module (``pytestmark = usefixtures("one_torch_thread")``)."""
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the pool's
    # barriers make every op wait for a descheduled worker (measured 10-50x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding the demo model set. Read-only by convention: copy it to change it."""
    models_dir = tmp_path_factory.mktemp("models")
    create_demo_models(models_dir)
    return models_dir


@pytest.fixture
def model_manager(demo_models_dir: Path) -> ModelManager:
    """A fresh CPU float32 ModelManager on the demo models (nothing loaded yet)."""
    config = EngineConfig(models_dir=demo_models_dir, styles_dir=demo_models_dir / "styles")
    return ModelManager(config, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def engine(demo_models_dir: Path) -> Engine:
    """A CPU Engine on the demo model set and the project's styles, downloads off.

    Modules that test the engine on other models override it with their own ``engine``.
    """
    return cpu_engine(demo_models_dir)

"""Shared fixtures of the engine tests: the demo model set, written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig
from engine.demo import create_demo_models
from engine.models import ModelManager


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

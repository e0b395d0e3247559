"""Admin tests write output files; each test gets its own folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache


@pytest.fixture(autouse=True)
def _folders(settings: Any, tmp_path: Path) -> None:
    settings.FOOOCUS_OUTPUTS_DIR = tmp_path / "outputs"
    settings.FOOOCUS_INPUTS_DIR = tmp_path / "inputs"
    # Live state and thumbnails live in the process's cache; tests must not see each other's.
    cache.clear()

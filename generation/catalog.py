"""What this server offers: model files, styles, presets — read from the engine's folders.

Web processes use it to validate requests and answer ``/v1/engines/*`` without loading models:
everything here is the engine's torch-free part (folder listings, the style library, presets and
:class:`engine.check.RequestChecker`, the same check ``Engine.generate`` runs first).
"""

from __future__ import annotations

import functools
from pathlib import Path

from django.conf import settings

from engine.check import RequestChecker
from engine.config import EngineConfig, list_model_files
from engine.presets import Preset, all_checksums, all_downloads, list_presets, load_preset
from engine.prompts.styles import StyleLibrary
from engine.types import EngineRequest


class Catalog:
    """A view of the configured folders. Cheap to build; reads the disk on each call."""

    def __init__(self, config: EngineConfig, presets_dir: Path) -> None:
        self.config = config
        self.presets_dir = presets_dir

    def list_files(self, folder: str) -> list[str]:
        """Model files (and diffusers folders) present in ``models/<folder>``."""
        return list_model_files(self.config.models_dir, folder)

    def downloadable(self, folder: str) -> list[str]:
        prefix = f"{folder}/"
        return sorted(key[len(prefix) :] for key in self.config.downloads if key.startswith(prefix))

    def model_available(self, folder: str, name: str) -> bool:
        """Present on disk, or known to a preset's download table (fetched on first use)."""
        if not name or "/" in name or "\\" in name or name.startswith("."):
            return False
        return name in self.list_files(folder) or f"{folder}/{name}" in self.config.downloads

    @functools.cached_property
    def _styles(self) -> StyleLibrary:
        # One library per process: it re-reads its files when they change on disk and fetches
        # Fooocus's style files on first use when downloads are allowed.
        return StyleLibrary.from_config(self.config)

    def style_library(self) -> StyleLibrary:
        return self._styles

    def styles(self) -> list[str]:
        return self._styles.names()

    def check(self, request: EngineRequest) -> None:
        """The engine's own check of a request (:mod:`engine.check`), without loading a model."""
        RequestChecker(self.config, styles=self.style_library()).check(request)

    def presets(self) -> list[str]:
        return list_presets(self.presets_dir)

    def preset(self, name: str) -> Preset:
        if name == "initial":
            name = settings.FOOOCUS_PRESET
        return load_preset(self.presets_dir, name)


def engine_config() -> EngineConfig:
    """The engine configuration from Django settings (download URLs gathered from all presets)."""
    return EngineConfig(
        models_dir=Path(settings.FOOOCUS_MODELS_DIR),
        styles_dir=Path(settings.FOOOCUS_STYLES_DIR),
        wildcards_dir=Path(settings.FOOOCUS_WILDCARDS_DIR),
        downloads=all_downloads(Path(settings.FOOOCUS_PRESETS_DIR)),
        checksums=all_checksums(Path(settings.FOOOCUS_PRESETS_DIR)),
        device=settings.FOOOCUS_DEVICE,
        allow_downloads=settings.FOOOCUS_ALLOW_DOWNLOADS,
        vram=settings.FOOOCUS_VRAM,
        compile=settings.FOOOCUS_COMPILE,
    )


@functools.cache
def get_catalog() -> Catalog:
    """The process's catalog (settings do not change while a process runs)."""
    return Catalog(engine_config(), Path(settings.FOOOCUS_PRESETS_DIR))

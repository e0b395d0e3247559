"""Where the engine finds its files and which device it runs on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

MODEL_FOLDERS: tuple[str, ...] = (
    "checkpoints",
    "loras",
    "vae",
    "embeddings",
    "vae_approx",
    "upscale_models",
    "inpaint",
    "controlnet",
    "clip_vision",
    "prompt_expansion",
    "prompt_expansion/fooocus_expansion",
    "safety_checker",
)


@dataclass(frozen=True)
class EngineConfig:
    """The engine's environment.

    ``downloads`` maps ``"<folder>/<filename>"`` (e.g. ``"loras/sdxl_lcm_lora.safetensors"``)
    to the URL the file is fetched from when a request needs it and it is missing.
    ``device`` is ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda:N"``.
    """

    models_dir: Path
    styles_dir: Path
    downloads: Mapping[str, str] = field(default_factory=dict)
    device: str = "auto"
    allow_downloads: bool = True
    wildcards_dir: Path | None = None
    """Folder of ``<name>.txt`` wildcard files (searched recursively); None means the
    ``wildcards`` folder beside ``styles_dir``."""
    vram: str | None = None
    """Memory level ``auto|high|normal|low|none`` (see :mod:`engine.memory`); None reads
    ``FOOOCUS_VRAM`` (default ``auto``)."""
    vram_budget: int | None = None
    """Device bytes the engine may use; None measures the free memory at start. Set on a CPU
    engine it makes the memory plan act as on a device of that size (for tests)."""
    batch_images: bool | None = None
    """Sample a request's images together in one UNet batch (as large as the memory plan
    allows); None means on CUDA only."""
    compile: bool | None = None
    """Compile the UNet with torch.compile (warmed up at start); None reads ``FOOOCUS_COMPILE``."""

    @property
    def wildcards_path(self) -> Path:
        """Where wildcard files are looked up."""
        return self.wildcards_dir or self.styles_dir.parent / "wildcards"

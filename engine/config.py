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
    # The describe and mask models (engine.tools.files): SAM's folder and transformers folders.
    "sam",
    "clip_vision/blip-image-captioning-base",
    "inpaint/grounding-dino-tiny",
    "sam/sam-vit-base",
    "sam/sam-vit-large",
    "sam/sam-vit-huge",
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

    @property
    def wildcards_path(self) -> Path:
        """Where wildcard files are looked up."""
        return self.wildcards_dir or self.styles_dir.parent / "wildcards"

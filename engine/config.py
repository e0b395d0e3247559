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
    to the URL the file is fetched from when a request needs it and it is missing; ``checksums``
    gives the SHA-256 a download must have, for the keys whose hash is known. Keys under
    ``styles/`` are style files for ``styles_dir``.
    ``device`` is ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda:N"``.
    """

    models_dir: Path
    styles_dir: Path
    downloads: Mapping[str, str] = field(default_factory=dict)
    checksums: Mapping[str, str] = field(default_factory=dict)
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


# What counts as a model in a folder ------------------------------------------------------------
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".ckpt", ".pth", ".pt", ".bin")
LORA_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
"""What engine.models.lora.read_lora_file reads (torch.load weights_only for the pickles)."""
FOLDER_SUFFIXES: dict[str, tuple[str, ...]] = {"loras": LORA_SUFFIXES}
# A folder counts as a model when it holds this file (a diffusers model folder).
FOLDER_MARKERS: dict[str, str] = {"checkpoints": "model_index.json", "vae": "config.json"}
SIDECAR_SUFFIX = ".config"
"""``<stem>.config/`` beside a single-file model holds its component configs (not a model)."""


def model_folder(models_dir: Path, folder: str) -> Path:
    """``models_dir/<folder>``; ``folder`` must be one of :data:`MODEL_FOLDERS`."""
    if folder not in MODEL_FOLDERS:
        raise ValueError(f"unknown model folder {folder!r}; expected one of {MODEL_FOLDERS}")
    return models_dir / folder


def list_model_files(models_dir: Path, folder: str) -> list[str]:
    """The models in ``folder``: weight files and diffusers model folders, sorted (case-blind).

    Sidecar config folders (``<stem>.config/``) and hidden or partial files are not listed.
    Plain file-system reads: web processes list models with it without loading the engine.
    """
    root = model_folder(models_dir, folder)
    if not root.is_dir():
        return []
    suffixes = FOLDER_SUFFIXES.get(folder, WEIGHT_SUFFIXES)
    names = [
        entry.name
        for entry in root.iterdir()
        if not entry.name.startswith(".") and is_model_entry(folder, entry, suffixes)
    ]
    return sorted(names, key=lambda n: (n.casefold(), n))


def is_model_entry(folder: str, entry: Path, suffixes: tuple[str, ...]) -> bool:
    """A model of ``folder``: a weight file with one of ``suffixes``, or a diffusers folder."""
    if entry.is_dir():
        marker = FOLDER_MARKERS.get(folder)
        return (
            marker is not None
            and not entry.name.endswith(SIDECAR_SUFFIX)
            and (entry / marker).is_file()
        )
    return entry.suffix.lower() in suffixes


# The fixed support files features need (fetched on demand when a download URL is known) -------
EXPANSION_FOLDER = "prompt_expansion/fooocus_expansion"
# The files of the expansion model folder; each is fetched on demand when missing.
EXPANSION_FILES: tuple[str, ...] = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "positive.txt",
    "pytorch_model.bin",
)
SAFETY_FOLDER = "safety_checker"
SAFETY_FILE = "stable-diffusion-safety-checker.bin"
UPSCALER_FOLDER = "upscale_models"
UPSCALER_FILE = "fooocus_upscaler_s409985e5.bin"
INPAINT_FOLDER = "inpaint"
INPAINT_HEAD_FILE = "fooocus_inpaint_head.pth"
INPAINT_PATCH_FILES: dict[str, str] = {
    "v1": "inpaint.fooocus.patch",
    "v2.5": "inpaint_v25.fooocus.patch",
    "v2.6": "inpaint_v26.fooocus.patch",
}
CONTROLNET_FOLDER = "controlnet"
CLIP_VISION_FOLDER = "clip_vision"
CONTROL_LORA_FILES: dict[str, str] = {
    "PyraCanny": "control-lora-canny-rank128.safetensors",
    "CPDS": "fooocus_xl_cpds_128.safetensors",
}
IP_ADAPTER_FILES: dict[str, str] = {
    "ImagePrompt": "ip-adapter-plus_sdxl_vit-h.bin",
    "FaceSwap": "ip-adapter-plus-face_sdxl_vit-h.bin",
}
CLIP_VISION_FILE = "clip_vision_vit_h.safetensors"
IP_NEGATIVE_FILE = "fooocus_ip_negative.safetensors"

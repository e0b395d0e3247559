"""Presets: JSON files (Fooocus's preset format) that set request defaults and model downloads.

A preset maps Fooocus's ``default_*`` keys onto request fields; any key it omits keeps the
built-in default. ``*_downloads`` tables give the URL of each model file the preset may need,
as Fooocus writes them (``"name": "url"``) or as ``"name": {"url": ..., "sha256": ...}`` when
the file's SHA-256 is known (the download is then verified); ``style_downloads`` names style
files for the styles folder (key ``styles/<name>``). ``performance_loras`` (our extension)
replaces the LoRA file of a LoRA performance, for model families other than SDXL (the demo model
set uses it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.types import EngineInputError

# preset key -> request field
PRESET_FIELD_KEYS: dict[str, str] = {
    "default_model": "base_model_name",
    "default_refiner": "refiner_model_name",
    "default_refiner_switch": "refiner_switch",
    "default_loras": "loras",
    "default_cfg_scale": "guidance_scale",
    "default_sample_sharpness": "sharpness",
    "default_sampler": "sampler_name",
    "default_scheduler": "scheduler_name",
    "default_performance": "performance_selection",
    "default_prompt": "prompt",
    "default_prompt_negative": "negative_prompt",
    "default_styles": "style_selections",
    "default_aspect_ratio": "aspect_ratios_selection",
    "default_vae": "vae_name",
    "default_overwrite_step": "overwrite_step",
    "default_inpaint_engine_version": "inpaint_engine",
    "default_image_number": "image_number",
    "default_output_format": "output_format",
    "default_clip_skip": "clip_skip",
    "default_adaptive_cfg": "adaptive_cfg",
}

STYLE_DOWNLOAD_FOLDER = "styles"
"""The pseudo folder of style files in download keys (``styles/<file>``): the styles folder."""

# download table key -> model folder
DOWNLOAD_FOLDERS: dict[str, str] = {
    "checkpoint_downloads": "checkpoints",
    "lora_downloads": "loras",
    "embeddings_downloads": "embeddings",
    "vae_downloads": "vae",
    "prompt_expansion_downloads": "prompt_expansion/fooocus_expansion",
    "safety_checker_downloads": "safety_checker",
    "upscale_models_downloads": "upscale_models",
    "inpaint_downloads": "inpaint",
    "controlnet_downloads": "controlnet",
    "clip_vision_downloads": "clip_vision",
    "style_downloads": STYLE_DOWNLOAD_FOLDER,
    "sam_downloads": "sam",
}


@dataclass(frozen=True)
class Preset:
    """A loaded preset: request defaults, download URLs and the aspect ratios it offers."""

    name: str
    defaults: dict[str, Any]
    downloads: dict[str, str] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    """``"<folder>/<file>"`` -> SHA-256 (hex) of the downloads whose hash the preset gives."""
    aspect_ratios: tuple[str, ...] = ()
    performance_loras: dict[str, str] = field(default_factory=dict)


def _loras_from_preset(value: Any, path: Path) -> list[dict[str, Any]]:
    """Fooocus writes LoRAs as ``[enabled, name, weight]`` or ``[name, weight]`` lists."""
    loras: list[dict[str, Any]] = []
    for item in value:
        if isinstance(item, list | tuple) and len(item) == 3:
            enabled, name, weight = item
        elif isinstance(item, list | tuple) and len(item) == 2:
            enabled, (name, weight) = True, item
        elif isinstance(item, dict):
            enabled = item.get("enabled", True)
            name, weight = item["model_name"], item.get("weight", 0.5)
        else:
            raise ValueError(f"{path}: cannot read LoRA entry {item!r}")
        loras.append({"enabled": bool(enabled), "model_name": str(name), "weight": float(weight)})
    return loras


def _download_entry(entry: Any, path: Path, filename: str) -> tuple[str, str | None]:
    """(url, sha256 or None) of a download table entry: a URL, or ``{"url", "sha256"}``."""
    if isinstance(entry, str):
        return entry, None
    if isinstance(entry, dict) and isinstance(entry.get("url"), str):
        sha256 = entry.get("sha256")
        return entry["url"], str(sha256).lower() if sha256 else None
    raise ValueError(f"{path}: download entry for {filename} must be a URL or {{url, sha256}}")


def load_preset(presets_dir: Path, name: str) -> Preset:
    """Read ``<presets_dir>/<name>.json``. Unknown names are an :class:`EngineInputError`."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise EngineInputError("preset", f"invalid preset name {name!r}")
    path = presets_dir / f"{name}.json"
    if not path.is_file():
        raise EngineInputError(
            "preset", f"unknown preset {name!r}; available: {', '.join(list_presets(presets_dir))}"
        )
    raw = json.loads(path.read_text(encoding="utf-8"))
    defaults: dict[str, Any] = {}
    for key, request_field in PRESET_FIELD_KEYS.items():
        if key not in raw or raw[key] is None:
            continue
        value = raw[key]
        if request_field == "loras":
            value = _loras_from_preset(value, path)
        elif request_field == "aspect_ratios_selection":
            value = str(value).replace("×", "*").split(" ")[0]
        defaults[request_field] = value
    downloads: dict[str, str] = {}
    checksums: dict[str, str] = {}
    for key, folder in DOWNLOAD_FOLDERS.items():
        for filename, entry in (raw.get(key) or {}).items():
            url, sha256 = _download_entry(entry, path, filename)
            downloads[f"{folder}/{filename}"] = url
            if sha256:
                checksums[f"{folder}/{filename}"] = sha256
    ratios = tuple(
        str(r).replace("×", "*").split(" ")[0] for r in raw.get("available_aspect_ratios", [])
    )
    return Preset(
        name=name,
        defaults=defaults,
        downloads=downloads,
        checksums=checksums,
        aspect_ratios=ratios,
        performance_loras={str(k): str(v) for k, v in (raw.get("performance_loras") or {}).items()},
    )


def list_presets(presets_dir: Path) -> list[str]:
    """Names of the preset files in ``presets_dir``, sorted."""
    if not presets_dir.is_dir():
        return []
    return sorted(p.stem for p in presets_dir.glob("*.json"))


def all_downloads(presets_dir: Path) -> dict[str, str]:
    """Every download URL named by any preset (a file is fetched when any request needs it)."""
    merged: dict[str, str] = {}
    for name in list_presets(presets_dir):
        merged.update(load_preset(presets_dir, name).downloads)
    return merged


def all_checksums(presets_dir: Path) -> dict[str, str]:
    """Every SHA-256 any preset gives for a download, by ``"<folder>/<file>"``."""
    merged: dict[str, str] = {}
    for name in list_presets(presets_dir):
        merged.update(load_preset(presets_dir, name).checksums)
    return merged

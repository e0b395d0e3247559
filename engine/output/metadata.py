"""Image metadata (Fooocus's log rows and its two text schemes) and image encoding (§10.1-10.2).

:class:`ImageMetadata` holds what one image was made with. ``rows()`` gives Fooocus's
(label, key, value) rows; ``text("fooocus")`` is the sorted JSON Fooocus embeds, ``text("a1111")``
the A1111/Civitai "parameters" string. :func:`encode_image_file` writes PNG text chunks or JPEG/WEBP
EXIF the way Fooocus does, so its metadata import reads our files.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

FOOOCUS_VERSION = "2.5.5"
VERSION_TEXT = f"Fooocus v{FOOOCUS_VERSION}"
DEFAULT_ADAPTIVE_CFG = 7.0
EXIF_USER_COMMENT = 0x9286
EXIF_SOFTWARE = 0x0131
EXIF_MAKER_NOTE = 0x927C
IMAGE_QUALITY = 95

A1111_SAMPLER_NAMES: dict[str, str] = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS",
    "dpm_fast": "DPM fast",
    "dpm_adaptive": "DPM adaptive",
    "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_sde_gpu": "DPM++ SDE",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_gpu": "DPM++ 2M SDE",
    "lcm": "LCM",
    "tcd": "TCD",
    "restart": "Restart",
    "ddim": "DDIM",
    "uni_pc": "UniPC",
}
# A1111 names that never get the " Karras" suffix.
A1111_NO_KARRAS = frozenset(
    {"Euler", "Euler a", "Heun", "DPM fast", "DPM adaptive", "DDIM", "UniPC"}
)


@dataclass(frozen=True)
class LoraRecord:
    """A LoRA as recorded: file name, weight and short hash."""

    name: str
    weight: float
    hash: str


@dataclass(frozen=True)
class ImageMetadata:
    """Everything Fooocus records about one image. Names are file names (``x.safetensors``)."""

    prompt: str
    negative_prompt: str
    full_prompt: list[str]
    full_negative_prompt: list[str]
    styles: list[str]
    performance: str
    steps: int
    width: int
    height: int
    guidance_scale: float
    sharpness: float
    adm_guidance: tuple[float, float, float]
    base_model: str
    base_model_hash: str
    sampler: str
    scheduler: str
    vae: str
    seed: int
    scheme: str = "fooocus"
    refiner_model: str = "None"
    refiner_model_hash: str = ""
    refiner_switch: float = 0.5
    overwrite_switch: float = -1
    refiner_swap_method: str = "joint"
    adaptive_cfg: float = DEFAULT_ADAPTIVE_CFG
    clip_skip: int = 2
    freeu: tuple[float, float, float, float] | None = None
    loras: list[LoraRecord] = field(default_factory=list)
    expansion: str = ""

    def rows(self) -> list[tuple[str, str, object]]:
        """Fooocus's (label, key, value) log rows, optional rows only when they apply."""
        rows: list[tuple[str, str, object]] = [
            ("Prompt", "prompt", self.prompt),
            ("Negative Prompt", "negative_prompt", self.negative_prompt),
            ("Fooocus V2 Expansion", "prompt_expansion", self.expansion),
            ("Styles", "styles", str(self.styles)),
            ("Performance", "performance", self.performance),
            ("Steps", "steps", self.steps),
            ("Resolution", "resolution", str((self.width, self.height))),
            ("Guidance Scale", "guidance_scale", self.guidance_scale),
            ("Sharpness", "sharpness", self.sharpness),
            ("ADM Guidance", "adm_guidance", str(self.adm_guidance)),
            ("Base Model", "base_model", self.base_model),
            ("Refiner Model", "refiner_model", self.refiner_model),
            ("Refiner Switch", "refiner_switch", self.refiner_switch),
        ]
        if self.refiner_model != "None":
            if self.overwrite_switch > 0:
                rows.append(("Overwrite Switch", "overwrite_switch", self.overwrite_switch))
            if self.refiner_swap_method != "joint":
                rows.append(
                    ("Refiner Swap Method", "refiner_swap_method", self.refiner_swap_method)
                )
        if self.adaptive_cfg != DEFAULT_ADAPTIVE_CFG:
            rows.append(("CFG Mimicking from TSNR", "adaptive_cfg", self.adaptive_cfg))
        if self.clip_skip > 1:
            rows.append(("CLIP Skip", "clip_skip", self.clip_skip))
        rows += [
            ("Sampler", "sampler", self.sampler),
            ("Scheduler", "scheduler", self.scheduler),
            ("VAE", "vae", self.vae),
            ("Seed", "seed", str(self.seed)),
        ]
        if self.freeu is not None:
            rows.append(("FreeU", "freeu", str(self.freeu)))
        for k, lora in enumerate(self.loras, start=1):
            rows.append((f"LoRA {k}", f"lora_combined_{k}", f"{lora.name} : {lora.weight}"))
        rows.append(("Metadata Scheme", "metadata_scheme", self.scheme))
        rows.append(("Version", "version", VERSION_TEXT))
        return rows

    def to_dict(self) -> dict[str, object]:
        """The rows as {key: value} plus the full prompt lists and the scheme's text."""
        data: dict[str, object] = {key: value for _, key, value in self.rows()}
        data["full_prompt"] = list(self.full_prompt)
        data["full_negative_prompt"] = list(self.full_negative_prompt)
        data["base_model_hash"] = self.base_model_hash
        data["metadata_text"] = self.text(self.scheme)
        return data

    def text(self, scheme: str) -> str:
        """The metadata string of ``scheme`` (``fooocus`` or ``a1111``)."""
        if scheme == "fooocus":
            return self.to_fooocus()
        if scheme == "a1111":
            return self.to_a1111()
        raise ValueError(f"unknown metadata scheme '{scheme}'")

    def to_fooocus(self) -> str:
        """Fooocus's scheme: JSON with sorted keys; model and LoRA names as stems."""
        data: dict[str, object] = {}
        for _, key, value in self.rows():
            if key.startswith("lora_combined_") and isinstance(value, str):
                name, weight = value.split(" : ")
                value = f"{Path(name).stem} : {weight}"
            data[key] = value
        data["full_prompt"] = list(self.full_prompt)
        data["full_negative_prompt"] = list(self.full_negative_prompt)
        data["steps"] = self.steps
        data["base_model"] = Path(self.base_model).stem
        data["base_model_hash"] = self.base_model_hash
        if self.refiner_model not in ("", "None"):
            data["refiner_model"] = Path(self.refiner_model).stem
            data["refiner_model_hash"] = self.refiner_model_hash
        data["vae"] = Path(self.vae).stem
        data["loras"] = [[Path(lo.name).stem, lo.weight, lo.hash] for lo in self.loras]
        return json.dumps(dict(sorted(data.items())))

    def to_a1111(self) -> str:
        """The A1111 "parameters" text: prompt, negative prompt, then ``Key: value`` pairs."""
        data = {key: value for _, key, value in self.rows()}
        sampler = A1111_SAMPLER_NAMES.get(self.sampler, self.sampler)
        karras = self.scheduler == "karras" and self.sampler in A1111_SAMPLER_NAMES
        if karras and sampler not in A1111_NO_KARRAS:
            sampler += " Karras"
        params: dict[str, object] = {
            "Steps": self.steps,
            "Sampler": sampler,
            "Seed": str(self.seed),
            "Size": f"{self.width}x{self.height}",
            "CFG scale": self.guidance_scale,
            "Sharpness": self.sharpness,
            "ADM Guidance": str(self.adm_guidance),
            "Model": Path(self.base_model).stem,
            "Model hash": self.base_model_hash,
            "Performance": self.performance,
            "Scheduler": self.scheduler,
            "VAE": Path(self.vae).stem,
            "Raw prompt": self.prompt,
            "Raw negative prompt": self.negative_prompt,
        }
        if self.refiner_model not in ("", "None"):
            params["Refiner"] = Path(self.refiner_model).stem
            params["Refiner hash"] = self.refiner_model_hash
        for key, label in (
            ("adaptive_cfg", "Adaptive CFG"),
            ("clip_skip", "Clip skip"),
            ("overwrite_switch", "Overwrite Switch"),
            ("refiner_swap_method", "Refiner Swap Method"),
            ("freeu", "FreeU"),
        ):
            if key in data:
                params[label] = data[key]
        if self.loras:
            stems = [Path(lo.name).stem for lo in self.loras]
            params["Lora hashes"] = ", ".join(
                f"{s}: {lo.hash}" for s, lo in zip(stems, self.loras, strict=True)
            )
            params["Lora weights"] = ", ".join(
                f"{s}: {lo.weight}" for s, lo in zip(stems, self.loras, strict=True)
            )
        params["Version"] = VERSION_TEXT
        pairs = ", ".join(f"{k}: {_a1111_quote(v)}" for k, v in params.items() if v is not None)
        positive = ", ".join(self.full_prompt)
        negative = ", ".join(self.full_negative_prompt)
        negative_line = f"\nNegative prompt: {negative}" if negative else ""
        return f"{positive}{negative_line}\n{pairs}".strip()


def _a1111_quote(value: object) -> object:
    # A1111's parser splits on ", " and ": ", so values holding those (or newlines) are quoted.
    text = str(value)
    if "," in text or ":" in text or "\n" in text:
        return json.dumps(text, ensure_ascii=False)
    return value


class FileHasher:
    """Short SHA-256 (first 10 hex chars) of model files, cached by path, mtime and size.

    A directory (a diffusers-format model) hashes its files' relative names and contents in order.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int, int], str] = {}

    def short_hash(self, path: Path) -> str:
        """The first 10 hex digits of the file's SHA-256 (computed once per file version)."""
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(key)
        if cached is None:
            cached = _sha256(path)[:10]
            self._cache[key] = cached
        return cached


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def encode_image_file(
    image: Image.Image, output_format: str, metadata_text: str | None, scheme: str
) -> bytes:
    """Encode ``image`` as png/jpeg/webp bytes, embedding ``metadata_text`` when given.

    PNG: text chunks ``parameters`` (the text) and ``fooocus_scheme``. JPEG (quality 95, optimised,
    progressive) and WEBP (quality 95, lossy): EXIF UserComment = text, Software = the Fooocus
    version, MakerNote = scheme. Non-ASCII text goes into UserComment as UTF-8 bytes, since EXIF
    strings are ASCII-only and would otherwise lose characters.
    """
    fmt = output_format.lower()
    buffer = io.BytesIO()
    rgb = image.convert("RGB")
    if fmt == "png":
        info = PngInfo()
        if metadata_text is not None:
            info.add_text("parameters", metadata_text)
            info.add_text("fooocus_scheme", scheme)
        rgb.save(buffer, "PNG", pnginfo=info)
        return buffer.getvalue()
    if fmt not in ("jpeg", "jpg", "webp"):
        raise ValueError(f"unknown output format '{output_format}'")
    exif = Image.Exif()
    if metadata_text is not None:
        exif[EXIF_USER_COMMENT] = (
            metadata_text if metadata_text.isascii() else metadata_text.encode()
        )
        exif[EXIF_SOFTWARE] = VERSION_TEXT
        exif[EXIF_MAKER_NOTE] = scheme
    if fmt == "webp":
        rgb.save(buffer, "WEBP", quality=IMAGE_QUALITY, lossless=False, exif=exif)
    else:
        rgb.save(buffer, "JPEG", quality=IMAGE_QUALITY, optimize=True, progressive=True, exif=exif)
    return buffer.getvalue()


def read_image_metadata(data: bytes) -> tuple[str | None, str | None]:
    """(metadata text, scheme) embedded in encoded image bytes, or (None, None)."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "PNG":
            text = image.info.get("parameters")
            scheme = image.info.get("fooocus_scheme")
            return text, scheme
        exif = image.getexif()
    comment = exif.get(EXIF_USER_COMMENT)
    if isinstance(comment, bytes):
        comment = comment.decode("utf-8", errors="replace")
    scheme = exif.get(EXIF_MAKER_NOTE)
    if isinstance(scheme, bytes):
        scheme = scheme.decode("utf-8", errors="replace")
    return comment, scheme

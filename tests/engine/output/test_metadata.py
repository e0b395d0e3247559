"""Metadata rows and schemes, image encoding with embedded metadata, model hashes."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from engine.output.metadata import (
    FileHasher,
    ImageMetadata,
    LoraRecord,
    encode_image_file,
    read_image_metadata,
)


def _metadata(**overrides: object) -> ImageMetadata:
    values: dict[str, object] = {
        "prompt": "a cat\nextra line",
        "negative_prompt": "dog",
        "full_prompt": ["a cat, crisp", "extra line"],
        "full_negative_prompt": ["blurry", "dog"],
        "styles": ["Fooocus Sharp"],
        "performance": "Speed",
        "steps": 30,
        "width": 1152,
        "height": 896,
        "guidance_scale": 4.0,
        "sharpness": 2.0,
        "adm_guidance": (1.5, 0.8, 0.3),
        "base_model": "juggernautXL_v8Rundiffusion.safetensors",
        "base_model_hash": "aeb7e9e689",
        "sampler": "dpmpp_2m_sde_gpu",
        "scheduler": "karras",
        "vae": "Default (model)",
        "seed": 1234,
        "loras": [LoraRecord("sd_xl_offset_example-lora_1.0.safetensors", 0.1, "4852686128")],
    }
    values.update(overrides)
    return ImageMetadata(**values)  # type: ignore[arg-type]


def test_rows_follow_fooocus() -> None:
    rows = _metadata().rows()
    keys = [key for _, key, _ in rows]
    assert keys[:13] == [
        "prompt", "negative_prompt", "prompt_expansion", "styles", "performance", "steps",
        "resolution", "guidance_scale", "sharpness", "adm_guidance", "base_model", "refiner_model",
        "refiner_switch",
    ]  # fmt: skip
    values = {key: value for _, key, value in rows}
    assert values["resolution"] == "(1152, 896)"
    assert values["styles"] == "['Fooocus Sharp']"
    assert values["seed"] == "1234"
    assert values["lora_combined_1"] == "sd_xl_offset_example-lora_1.0.safetensors : 0.1"
    assert values["version"] == "Fooocus v2.5.5"
    assert "adaptive_cfg" not in values
    assert values["clip_skip"] == 2
    assert {k for _, k, _ in _metadata(adaptive_cfg=1.0, clip_skip=1).rows()} >= {"adaptive_cfg"}
    assert "clip_skip" not in {k for _, k, _ in _metadata(clip_skip=1).rows()}


def test_fooocus_scheme_is_sorted_json_with_stems() -> None:
    text = _metadata().to_fooocus()
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert data["base_model"] == "juggernautXL_v8Rundiffusion"
    assert data["base_model_hash"] == "aeb7e9e689"
    assert data["loras"] == [["sd_xl_offset_example-lora_1.0", 0.1, "4852686128"]]
    assert data["lora_combined_1"] == "sd_xl_offset_example-lora_1.0 : 0.1"
    assert data["full_prompt"] == ["a cat, crisp", "extra line"]
    assert data["steps"] == 30
    assert data["vae"] == "Default (model)"
    assert "refiner_model_hash" not in data


def test_a1111_scheme() -> None:
    text = _metadata().to_a1111()
    lines = text.split("\n")
    assert lines[0] == "a cat, crisp, extra line"
    assert lines[1] == "Negative prompt: blurry, dog"
    params = lines[2]
    assert params.startswith(
        "Steps: 30, Sampler: DPM++ 2M SDE Karras, Seed: 1234, Size: 1152x896, CFG scale: 4.0"
    )
    assert 'ADM Guidance: "(1.5, 0.8, 0.3)"' in params
    assert "Model: juggernautXL_v8Rundiffusion, Model hash: aeb7e9e689" in params
    assert 'Raw prompt: "a cat\\nextra line"' in params
    assert 'Lora hashes: "sd_xl_offset_example-lora_1.0: 4852686128"' in params
    assert params.endswith("Version: Fooocus v2.5.5")
    euler = _metadata(sampler="euler", full_negative_prompt=[]).to_a1111()
    assert "Sampler: Euler," in euler
    assert "Negative prompt" not in euler


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_encoded_images_carry_the_metadata(fmt: str) -> None:
    image = Image.new("RGB", (16, 16), (200, 10, 10))
    text = _metadata(prompt="une tête de chat").to_fooocus()
    data = encode_image_file(image, fmt, text, "fooocus")
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
        if fmt == "png":
            assert decoded.info["parameters"] == text
            assert decoded.info["fooocus_scheme"] == "fooocus"
        else:
            exif = decoded.getexif()
            assert exif[0x0131] == "Fooocus v2.5.5"
            assert exif[0x927C] == "fooocus"
    assert read_image_metadata(data) == (text, "fooocus")
    ascii_text = _metadata().to_a1111()
    assert read_image_metadata(encode_image_file(image, fmt, ascii_text, "a1111")) == (
        ascii_text,
        "a1111",
    )
    assert read_image_metadata(encode_image_file(image, fmt, None, "fooocus")) == (None, None)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="gif"):
        encode_image_file(Image.new("RGB", (4, 4)), "gif", None, "fooocus")


def test_hashes_are_short_sha256_and_cached(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"weights")
    hasher = FileHasher()
    assert hasher.short_hash(model) == hashlib.sha256(b"weights").hexdigest()[:10]
    hasher._cache[next(iter(hasher._cache))] = "cached0000"
    assert hasher.short_hash(model) == "cached0000"
    model.write_bytes(b"other weights")  # new size: hashed again
    assert hasher.short_hash(model) == hashlib.sha256(b"other weights").hexdigest()[:10]
    folder = tmp_path / "diffusers_model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "w.bin").write_bytes(b"x")
    assert len(hasher.short_hash(folder)) == 10

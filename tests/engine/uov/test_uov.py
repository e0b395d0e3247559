"""Upscale and Vary on the demo model set: size rules, partial denoise, the ESRGAN upscaler."""

from __future__ import annotations

import re
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import Engine, EngineEvent, EngineRequest
from engine.config import UPSCALER_FILE, UPSCALER_FOLDER
from engine.demo.writer import DEMO_CHECKPOINT
from engine.imaging import (
    fit_shape_ceil,
    shape_ceil,
    size_unit,
    tiled_apply,
)
from engine.refiner import sampler_sigmas
from engine.sampling import schedule_for
from engine.uov.rules import tail_sigmas
from engine.uov.upscaler import Upscaler, upscale_tiled
from engine.vae import decode_latent, encode_to_latent

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gradient(width: int, height: int) -> Image.Image:
    red = np.broadcast_to(np.linspace(0, 255, width)[None, :], (height, width))
    green = np.broadcast_to(np.linspace(0, 255, height)[:, None], (height, width))
    blue = np.full((height, width), 90.0)
    return Image.fromarray(np.stack([red, green, blue], axis=2).astype(np.uint8))


BASE = EngineRequest(
    base_model_name=DEMO_CHECKPOINT,
    prompt="a house",
    style_selections=(),
    sampler_name="euler",
    scheduler_name="karras",
    overwrite_step=3,
    image_number=1,
    seed=5,
    width=64,
    height=64,
)


def run(engine: Engine, request: EngineRequest) -> tuple[list[Image.Image], list[str]]:
    messages: list[str] = []

    def on_event(event: EngineEvent) -> None:
        messages.append(event.message)

    result = engine.generate(request, on_event=on_event)
    return [g.image for g in result.images], messages


def sampled_steps(messages: list[str]) -> list[tuple[int, int]]:
    found = [re.match(r"Sampling step (\d+)/(\d+)", m) for m in messages]
    return [(int(m[1]), int(m[2])) for m in found if m]


def test_size_rules_are_relative_to_native() -> None:
    assert size_unit(1024) == 64
    assert size_unit(64) == 8
    assert shape_ceil(1152, 896, 64) == 1024
    width, height = fit_shape_ceil(500, 300, 1024, 64)
    assert width % 64 == 0
    assert height % 64 == 0
    assert shape_ceil(width, height, 64) == 1024
    assert width > height
    width, height = fit_shape_ceil(40, 24, 64, 8)
    assert shape_ceil(width, height, 8) == 64
    assert width > height


def test_partial_denoise_is_the_tail_of_a_longer_schedule() -> None:
    schedule, rule = schedule_for("karras")

    def full(n: int) -> list[float]:
        return sampler_sigmas("euler", rule, n, schedule)

    tail = tail_sigmas(full, 30, 0.5)
    assert len(tail) == 31
    assert tail == full(60)[-31:]
    assert tail[0] < full(30)[0]
    assert tail_sigmas(full, 18, 0.382) == full(47)[-19:]
    assert tail_sigmas(full, 5, 1.0) == full(5)


def test_vary_keeps_the_fitted_size_and_runs_n_steps(engine: Engine) -> None:
    source = gradient(40, 24)  # shape ceil 32 < native 64: fitted up
    request = replace(BASE, uov_method="Vary (Subtle)", uov_input_image=source)
    images, messages = run(engine, request)
    (image,) = images
    assert shape_ceil(*image.size, 8) == 64
    assert image.width > image.height
    assert image.width % 8 == 0
    steps = sampled_steps(messages)
    assert [s for s, _ in steps] == [1, 2, 3]
    assert {n for _, n in steps} == {3}
    # A native-size image keeps its size; a stronger vary changes it more.
    native = gradient(64, 64)
    subtle, _ = run(engine, replace(request, uov_input_image=native))
    strong, _ = run(engine, replace(request, uov_input_image=native, overwrite_vary_strength=1.0))
    assert subtle[0].size == (64, 64)
    original = np.asarray(native, dtype=np.float32)
    assert (
        np.abs(np.asarray(subtle[0], dtype=np.float32) - original).mean()
        < np.abs(np.asarray(strong[0], dtype=np.float32) - original).mean()
    )


def test_upscale_multiplies_the_size(engine: Engine) -> None:
    source = gradient(64, 48)
    two, messages = run(engine, replace(BASE, uov_method="Upscale (2x)", uov_input_image=source))
    assert two[0].size == (128, 96)
    assert sampled_steps(messages)[-1] == (3, 3)
    custom, _ = run(
        engine,
        replace(BASE, uov_method="Upscale (Custom)", upscale_multiple=1.25, uov_input_image=source),
    )
    assert custom[0].size == (80, 56)  # 80x60, VAE-cropped to multiples of 8


def test_fast_and_too_large_upscales_return_the_super_resolved_image(engine: Engine) -> None:
    source = gradient(50, 30)
    fast, messages = run(
        engine, replace(BASE, uov_method="Upscale (Fast 2x)", uov_input_image=source)
    )
    assert fast[0].size == (100, 60)
    assert not sampled_steps(messages)
    # 3x of 64x64 has shape ceil 192 > 2800/1024·64 = 175: no diffusion, the SR image itself.
    big, messages = run(
        engine,
        replace(
            BASE,
            uov_method="Upscale (Custom)",
            upscale_multiple=3.0,
            uov_input_image=gradient(64, 64),
            image_number=2,
        ),
    )
    assert [i.size for i in big] == [(192, 192)]
    assert not sampled_steps(messages)


def test_upscaler_loads_fooocus_keys_and_tiles_seamlessly(demo_models_dir: Path) -> None:
    upscaler = Upscaler(demo_models_dir / UPSCALER_FOLDER / UPSCALER_FILE, torch.device("cpu"))
    assert upscaler.scale == 4
    pixels = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    whole = upscale_tiled(upscaler.model, pixels, 4, 512, 32, torch.device("cpu"))
    tiled = upscale_tiled(upscaler.model, pixels, 4, 16, 8, torch.device("cpu"))
    assert whole.shape == tiled.shape == (1, 3, 96, 160)
    # Tiles see less context at their borders, so they differ a little, not wholesale.
    assert (whole - tiled).abs().mean() < 0.1 * whole.abs().mean() + 1e-3


def test_tiled_vae_keeps_the_latent_size(engine: Engine) -> None:
    components = engine.manager.load_base(DEMO_CHECKPOINT)
    image = gradient(96, 80)
    with torch.inference_mode():
        whole = encode_to_latent(components, image)
        tiled = encode_to_latent(components, image, tiled=True)
        assert whole.shape == tiled.shape == (1, 4, 10, 12)
        assert decode_latent(components, whole, tiled=True).size == (96, 80)


def test_tiled_apply_blends_windows_into_the_whole_result() -> None:
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(1))

    def pool(window: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(window, 8)

    def grow(window: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(window, scale_factor=4, mode="nearest")

    tiled = tiled_apply(pool, x, 16, 8, Fraction(1, 8))
    assert torch.allclose(tiled, pool(x), atol=1e-6)
    assert torch.allclose(tiled_apply(grow, x, 16, 4, Fraction(4)), grow(x), atol=1e-6)

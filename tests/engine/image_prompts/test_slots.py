"""ImagePrompt and FaceSwap (IP-Adapter Plus) and the mixing of image prompts with other inputs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import Engine, EngineRequest
from engine.config import IP_ADAPTER_FILES, IP_NEGATIVE_FILE
from engine.demo.writer import DEMO_CHECKPOINT
from engine.guidance import AdmTimeIds, FooocusDenoiser, GuidanceSettings, TextConditioning
from engine.image_prompts.ip_adapter import (
    ImagePromptAddOn,
    IpAdapterModel,
    PromptTokens,
    load_negative,
)
from engine.models.components import build_tiny_sdxl
from engine.sampling import build_sigmas, sample, schedule_for
from engine.types import ImagePromptSpec
from tests.engine.helpers import first_image_pixels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def picture() -> Image.Image:
    array = np.zeros((48, 64, 3), np.uint8)
    array[:, :, 0] = np.linspace(0, 255, 64)[None, :]
    array[10:30, 20:44] = (30, 200, 90)
    return Image.fromarray(array)


BASE = EngineRequest(
    base_model_name=DEMO_CHECKPOINT,
    prompt="a house",
    sampler_name="euler",
    overwrite_step=3,
    seed=11,
    width=64,
    height=64,
)


@pytest.mark.parametrize("cn_type", ["ImagePrompt", "FaceSwap"])
def test_image_prompt_changes_the_image_and_weight_zero_does_not(
    engine: Engine, cn_type: str
) -> None:
    plain = first_image_pixels(engine, BASE)
    prompted = first_image_pixels(
        engine, replace(BASE, image_prompts=(ImagePromptSpec(picture(), cn_type),))
    )
    assert np.abs(prompted - plain).mean() > 0.01
    zero = replace(BASE, image_prompts=(ImagePromptSpec(picture(), cn_type, weight=0.0),))
    assert np.array_equal(first_image_pixels(engine, zero), plain)


def test_attention_processors_are_restored(engine: Engine) -> None:
    engine.generate(replace(BASE, image_prompts=(ImagePromptSpec(picture(), "ImagePrompt"),)))
    unet = engine.manager.load_base(DEMO_CHECKPOINT).unet
    names = {type(p).__name__ for p in unet.attn_processors.values()}
    assert "ImagePromptAttention" not in names


def test_image_tokens_stop_at_cn_stop(demo_models_dir: Path) -> None:
    torch.manual_seed(0)
    components = build_tiny_sdxl(seed=1)
    folder = demo_models_dir / "controlnet"
    adapter = IpAdapterModel.load(folder / IP_ADAPTER_FILES["ImagePrompt"])
    adapter.check_fits(components.unet)
    negative = load_negative(folder / IP_NEGATIVE_FILE)
    with torch.inference_mode():
        positive = adapter.resampler(torch.randn(1, 17, 32))
    add_on = ImagePromptAddOn([PromptTokens(positive, negative, 0.6, 0.4, adapter)])
    schedule, rule = schedule_for("karras")
    sigmas = build_sigmas(rule, 8, schedule).tolist()
    cond = TextConditioning(torch.randn(1, 77, 64), torch.randn(1, 32))
    uncond = TextConditioning(torch.randn(1, 77, 64), torch.randn(1, 32))
    ids = AdmTimeIds.for_size(64, 64, 1.0)

    def run(add_ons: list[ImagePromptAddOn]) -> torch.Tensor:
        denoiser = FooocusDenoiser(
            components.unet, schedule, GuidanceSettings(), cond, uncond, ids, ids, add_ons
        )
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * sigmas[0]
        with torch.inference_mode():
            return sample("euler", denoiser, x, sigmas, seed=0)

    plain = run([])
    with add_on.installed(components.unet):
        prompted = run([add_on])
    expected = [s for s in sigmas[:-1] if 1 - schedule.timestep(s) / 999 < 0.4]
    assert 0 < add_on.applied == len(expected) < len(sigmas) - 1
    assert not torch.equal(plain, prompted)


def test_image_prompt_mixes_with_vary(engine: Engine) -> None:
    request = replace(
        BASE,
        uov_method="Vary (Subtle)",
        uov_input_image=picture().resize((72, 56)),
        # Vary (Subtle) starts half-way through the time axis: a stop of 0.5 would be over
        # before the first step (stops are time-based, §14.6).
        image_prompts=(ImagePromptSpec(picture(), "PyraCanny", stop=1.0),),
    )
    vary_only = replace(request, image_prompts=())
    mixed = first_image_pixels(engine, request)
    assert mixed.shape == (56, 72, 3)  # the vary size; the hint is fitted to it
    assert not np.array_equal(mixed, first_image_pixels(engine, vary_only))


def test_image_prompt_mixes_with_inpaint(engine: Engine) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    source = picture().resize((64, 64))
    request = replace(
        BASE,
        inpaint_input_image=source,
        inpaint_mask_image=mask,
        inpaint_engine="None",
        image_prompts=(ImagePromptSpec(picture(), "ImagePrompt"),),
    )
    out = first_image_pixels(engine, request)
    assert out.shape == (64, 64, 3)
    assert np.array_equal(out[0], np.asarray(source, dtype=np.float64)[0])

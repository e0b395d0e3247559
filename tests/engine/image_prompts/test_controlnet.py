"""Control-LoRA ControlNets: loading the file onto the UNet, softness, residuals until cn_stop."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from engine import Engine, EngineRequest
from engine.demo.image_prompts import control_lora_state
from engine.demo.writer import DEMO_CHECKPOINT
from engine.guidance import AdmTimeIds, FooocusDenoiser, GuidanceSettings, TextConditioning
from engine.image_prompts.controlnet import (
    ControlNetAddOn,
    ControlUnit,
    build_control_lora,
    controlnet_ldm_names,
    softness_factors,
)
from engine.models.components import build_tiny_sdxl
from engine.models.loading import CheckpointFormatError
from engine.sampling import build_sigmas, sample, schedule_for
from engine.types import ImagePromptSpec
from tests.engine.helpers import first_image_pixels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def edge_image() -> Image.Image:
    array = np.zeros((64, 64, 3), np.uint8)
    array[:, 32:] = 220
    array[16:40, 8:20] = 120
    return Image.fromarray(array)


def test_control_lora_adds_exactly_the_low_rank_product() -> None:
    components = build_tiny_sdxl(seed=1)
    weights = control_lora_state(components, seed=2)
    controlnet = build_control_lora(components.unet, weights)
    names = controlnet_ldm_names(controlnet)
    state, unet_state = controlnet.state_dict(), components.unet.state_dict()
    checked = 0
    for name, ldm in names.items():
        module = ldm.removesuffix(".weight")
        if f"{module}.up" in weights:
            up, down = weights[f"{module}.up"], weights[f"{module}.down"]
            delta = (up.flatten(1) @ down.flatten(1)).reshape(state[name].shape)
            torch.testing.assert_close(state[name] - unet_state[name], delta)
            checked += 1
        elif ldm in weights:
            assert torch.equal(state[name], weights[ldm])  # own weights replace
        else:
            assert torch.equal(state[name], unet_state[name])  # the rest is the UNet's
    assert checked > 50
    assert names["controlnet_cond_embedding.conv_in.weight"] == "input_hint_block.0.weight"
    assert names["controlnet_down_blocks.8.bias"] == "zero_convs.8.0.bias"
    assert names["controlnet_mid_block.weight"] == "middle_block_out.0.weight"


def test_control_lora_refuses_foreign_files() -> None:
    components = build_tiny_sdxl(seed=1)
    weights = control_lora_state(components, seed=2)
    with pytest.raises(CheckpointFormatError, match="marker"):
        build_control_lora(components.unet, {k: v for k, v in weights.items() if "." in k})
    with pytest.raises(CheckpointFormatError, match="unknown"):
        build_control_lora(
            components.unet,
            {**weights, "output_blocks.0.0.x.weight": weights["zero_convs.0.0.weight"]},
        )


def test_softness_factors() -> None:
    factors = softness_factors(10, 0.25)
    assert factors[0] == pytest.approx(0.75)
    assert factors[-1] == pytest.approx(1.0)
    assert factors[3] == pytest.approx(1 - 0.25 * (1 - 3 / 9))
    assert softness_factors(10, 0.0) == [1.0] * 10


def test_residuals_stop_at_cn_stop_and_reach_both_cfg_sides() -> None:
    torch.manual_seed(0)
    components = build_tiny_sdxl(seed=1)
    controlnet = build_control_lora(components.unet, control_lora_state(components, seed=2))
    schedule, rule = schedule_for("karras")
    sigmas = build_sigmas(rule, 8, schedule).tolist()
    cond = TextConditioning(torch.randn(1, 77, 64), torch.randn(1, 32))
    uncond = TextConditioning(torch.randn(1, 77, 64), torch.randn(1, 32))
    hint = torch.rand(1, 3, 64, 64)
    add_on = ControlNetAddOn([ControlUnit(controlnet, hint, 1.0, 0.5)], 0.25)
    ids = AdmTimeIds.for_size(64, 64, 1.0)
    denoiser = FooocusDenoiser(
        components.unet, schedule, GuidanceSettings(), cond, uncond, ids, ids, [add_on]
    )
    x = torch.randn(1, 4, 8, 8) * sigmas[0]
    with torch.inference_mode():
        sample("euler", denoiser, x, sigmas, seed=0)
    expected = [s for s in sigmas[:-1] if 1 - schedule.timestep(s) / 999 < 0.5]
    assert 0 < len(add_on.applied) == len(expected) < len(sigmas) - 1
    assert all(progress < 0.5 for progress in add_on.applied)
    assert denoiser.unet_calls == len(sigmas) - 1


BASE = EngineRequest(
    base_model_name=DEMO_CHECKPOINT,
    prompt="a house",
    sampler_name="euler",
    overwrite_step=3,
    seed=7,
    width=64,
    height=64,
)


@pytest.mark.parametrize("cn_type", ["PyraCanny", "CPDS"])
def test_controlnet_changes_the_image_and_stop_zero_does_not(engine: Engine, cn_type: str) -> None:
    plain = first_image_pixels(engine, BASE)
    controlled = first_image_pixels(
        engine, replace(BASE, image_prompts=(ImagePromptSpec(edge_image(), cn_type),))
    )
    assert np.abs(controlled - plain).mean() > 0.5
    stopped = replace(BASE, image_prompts=(ImagePromptSpec(edge_image(), cn_type, stop=0.0),))
    assert np.array_equal(first_image_pixels(engine, stopped), plain)


def test_debugging_preprocessor_returns_the_maps(engine: Engine) -> None:
    request = replace(
        BASE,
        debugging_cn_preprocessor=True,
        width=96,
        image_prompts=(
            ImagePromptSpec(edge_image(), "PyraCanny"),
            ImagePromptSpec(edge_image(), "CPDS"),
            ImagePromptSpec(edge_image(), "ImagePrompt"),
        ),
    )
    result = engine.generate(request)
    sizes = [g.image.size for g in result.images]
    assert sizes == [(96, 64), (96, 64), (224, 224)]
    canny = np.asarray(result.images[0].image)
    assert canny.max() == 255
    assert canny.min() == 0

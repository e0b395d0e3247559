"""Playground v2.5's EDM model sampling and latent normalisation (``edm_playground_v2.5``)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from engine import Engine, EngineEvent, EngineRequest
from engine.demo.writer import DEMO_CHECKPOINT
from engine.guidance import AdmTimeIds, FooocusDenoiser, GuidanceSettings
from engine.models.components import TINY_VAE_CONFIG, SDXLComponents, build_tiny_sdxl
from engine.presets import load_preset
from engine.sampling import EdmNoiseSchedule, NoiseSchedule, build_sigmas, schedule_for
from engine.types import EngineInputError
from engine.vae import (
    PLAYGROUND_LATENTS_MEAN,
    PLAYGROUND_LATENTS_STD,
    LatentFormat,
    decode_latent,
    encode_to_latent,
)
from tests.engine.test_guidance import FakeUNet, _cond
from tests.engine.test_pipeline import _pixels

ROOT = Path(__file__).resolve().parents[3]
EDM = "edm_playground_v2.5"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_edm_preconditioning_on_a_hand_computed_case() -> None:
    schedule = EdmNoiseSchedule()
    # sigma 1.5, sigma_data 0.5: sigma² + sigma_data² = 2.5
    assert schedule.input_scale(1.5) == pytest.approx(1 / math.sqrt(2.5))  # c_in = 0.632456
    assert schedule.timestep(1.5) == pytest.approx(0.101366, rel=1e-5)  # 0.25·ln 1.5
    assert schedule.sigma(schedule.timestep(1.5)) == pytest.approx(1.5)
    # c_skip = 0.25/2.5 = 0.1, c_out = 0.75/sqrt(2.5) = 0.474342: 0.1·2 + 0.474342·0.5
    denoised = schedule.denoised(torch.tensor([2.0]), 1.5, torch.tensor([0.5]))
    assert float(denoised) == pytest.approx(0.2 + 0.237171, rel=1e-5)
    # At sigma -> 0 the model output is ignored (c_skip -> 1, c_out -> 0).
    assert float(schedule.denoised(torch.tensor([2.0]), 1e-6, torch.tensor([9.0]))) == (
        pytest.approx(2.0, rel=1e-4)
    )


def test_the_denoiser_feeds_the_unet_edm_inputs_and_keeps_consistent_adm_ids() -> None:
    unet = FakeUNet()  # output 1 for the positive, 0 for the negative
    settings = GuidanceSettings(guidance_scale=2.0, sharpness=0.0, adm_scaler_end=0.3)
    denoiser = FooocusDenoiser(
        cast(Any, unet),
        EdmNoiseSchedule(),
        settings,
        _cond(77),
        _cond(77),
        AdmTimeIds.for_size(64, 64, 1.5),
        AdmTimeIds.for_size(64, 64, 0.8),
    )
    x = torch.full((1, 4, 2, 2), 3.0)
    out = denoiser(x, 120.0)
    call = unet.calls[0]
    assert torch.allclose(call["sample"], x / math.sqrt(120.0**2 + 0.25))
    assert call["t"].tolist() == pytest.approx([0.25 * math.log(120.0)] * 2)
    # Fooocus measures progress as 1 - t/999 with t = 0.25·ln sigma, so on EDM the ADM switch
    # (t > 699.3) never fires: both sides get the consistent ids from the first step.
    assert call["time_ids"].tolist() == [[64.0, 64.0, 0, 0, 64, 64]] * 2
    assert denoiser.last_progress == pytest.approx(1.0 - 0.25 * math.log(120.0) / 999.0)
    # CFG on x0: x0_c = c_skip·x + c_out, x0_u = c_skip·x; denoised = x0_u + 2·(x0_c - x0_u)
    total = 120.0**2 + 0.25
    expected = 0.25 / total * 3.0 + 2.0 * 120.0 * 0.5 / math.sqrt(total)
    assert torch.allclose(out, torch.full_like(x, expected), atol=1e-4)


def test_edm_playground_is_karras_between_0_002_and_120() -> None:
    schedule, rule = schedule_for(EDM)
    assert isinstance(schedule, EdmNoiseSchedule)
    assert rule == "karras"
    assert (schedule.sigma_min, schedule.sigma_max) == (0.002, 120.0)
    sigmas = build_sigmas(rule, 4, schedule).tolist()
    # (120^(1/7) + k/3·(0.002^(1/7) - 120^(1/7)))^7 for k = 0..3, then 0
    high, low = 120.0 ** (1 / 7), 0.002 ** (1 / 7)
    expected = [(high + k / 3 * (low - high)) ** 7 for k in range(4)] + [0.0]
    assert expected[1] == pytest.approx(14.0247, rel=1e-4)
    assert sigmas == pytest.approx(expected, rel=1e-6)
    assert build_sigmas(EDM, 4, schedule).tolist() == sigmas
    # The plain schedule is untouched: karras still spans SDXL's 0.0292 .. 14.6146.
    plain = build_sigmas("karras", 4, NoiseSchedule()).tolist()
    assert plain[0] == pytest.approx(14.6146, rel=1e-4)


def test_playground_latent_normalisation_round_trip() -> None:
    vae = AutoencoderKL(**TINY_VAE_CONFIG)
    sdxl = LatentFormat.of_vae(vae)
    assert sdxl.mean is None
    playground = LatentFormat.of_vae(vae, playground=True)  # no stats in the config: published
    assert playground.scale == 0.5
    assert playground.mean == PLAYGROUND_LATENTS_MEAN
    assert playground.std == PLAYGROUND_LATENTS_STD
    raw = torch.tensor(PLAYGROUND_LATENTS_MEAN).view(1, 4, 1, 1) + torch.tensor(
        PLAYGROUND_LATENTS_STD
    ).view(1, 4, 1, 1)
    assert playground.from_vae(raw).flatten().tolist() == pytest.approx([0.5] * 4)  # one std
    latent = torch.randn(1, 4, 3, 5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(playground.from_vae(playground.to_vae(latent)), latent, atol=1e-5)
    # Stats in the VAE config (a sidecar's vae/config.json) win over the published ones.
    config = {**TINY_VAE_CONFIG, "latents_mean": [1.0, 2.0, 3.0, 4.0], "scaling_factor": 0.25}
    own = LatentFormat.of_vae(AutoencoderKL(**config, latents_std=[2.0] * 4), playground=True)
    assert (own.scale, own.mean, own.std) == (0.25, (1.0, 2.0, 3.0, 4.0), (2.0,) * 4)
    assert float(own.from_vae(torch.full((1, 4, 1, 1), 3.0))[0, 0]) == pytest.approx(0.25)


def test_encode_and_decode_use_the_latent_format() -> None:
    tiny: SDXLComponents = build_tiny_sdxl(0)
    image = Image.new("RGB", (16, 16), (200, 80, 30))
    playground = LatentFormat.of_vae(tiny.vae, playground=True)
    with torch.inference_mode():
        plain = encode_to_latent(tiny, image)
        normalised = encode_to_latent(tiny, image, latent_format=playground)
        raw = plain / float(tiny.vae.config.scaling_factor)
        assert torch.allclose(normalised, playground.from_vae(raw), atol=1e-5)
        same = decode_latent(tiny, normalised, latent_format=playground)
        assert torch.equal(_pixels(same), _pixels(decode_latent(tiny, plain)))
        assert not torch.equal(_pixels(decode_latent(tiny, normalised)), _pixels(same))
    # Previews map Playground latents back into SDXL's space for their colour map.
    assert torch.allclose(playground.to_sdxl(normalised), plain, atol=1e-5)


def test_a_tiny_edm_run_finishes_and_differs_from_the_eps_path(engine: Engine) -> None:
    request = EngineRequest(
        base_model_name=DEMO_CHECKPOINT,
        prompt="a cat",
        style_selections=(),
        width=64,
        height=64,
        seed=5,
        overwrite_step=3,
        guidance_scale=2.0,
        sampler_name="dpmpp_2m",
        scheduler_name=EDM,
    )
    engine.check(request)
    events: list[EngineEvent] = []
    edm = engine.generate(request, on_event=events.append).images[0]
    again = engine.generate(request).images[0]
    eps = engine.generate(replace(request, scheduler_name="karras")).images[0]
    assert edm.image.size == (64, 64)
    assert sum(e.preview is not None for e in events) == 3
    assert torch.equal(_pixels(edm.image), _pixels(again.image))
    assert not torch.equal(_pixels(edm.image), _pixels(eps.image))
    assert edm.metadata["scheduler"] == EDM


def test_playground_preset_matches_fooocus() -> None:
    preset = load_preset(ROOT / "presets", "playground_v2.5")
    name = "playground-v2.5-1024px-aesthetic.fp16.safetensors"
    assert preset.defaults["base_model_name"] == name
    assert preset.defaults["guidance_scale"] == 2.0
    assert preset.defaults["sampler_name"] == "dpmpp_2m"
    assert preset.defaults["scheduler_name"] == EDM
    assert preset.defaults["performance_selection"] == "Speed"
    assert preset.defaults["style_selections"] == ["Fooocus V2"]
    assert preset.defaults["aspect_ratios_selection"] == "1024*1024"
    assert preset.defaults["inpaint_engine"] == "None"
    assert preset.downloads[f"checkpoints/{name}"] == (
        f"https://huggingface.co/mashb1t/fav_models/resolve/main/fav/{name}"
    )


@pytest.mark.parametrize("sampler", ["tcd", "lcm"])
def test_discrete_time_samplers_are_refused_with_edm(engine: Engine, sampler: str) -> None:
    request = EngineRequest(
        base_model_name=DEMO_CHECKPOINT,
        sampler_name=sampler,
        scheduler_name="edm_playground_v2.5",
        width=64,
        height=64,
    )
    with pytest.raises(EngineInputError) as info:
        engine.check(request)
    assert info.value.field == "sampler_name"

"""Fooocus guidance maths (sharpness, adaptive CFG, ADM) and the denoiser's UNet batching."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, cast

import pytest
import torch

from engine.guidance import (
    AdmTimeIds,
    FooocusDenoiser,
    GuidanceSettings,
    TextConditioning,
    combine_cfg,
    joint_bilateral_blur,
    round_to_64,
    sharpen_eps,
)
from engine.sampling import NoiseSchedule


def test_adaptive_cfg_mixes_mimic_and_real_scale_by_progress() -> None:
    pos, neg = torch.tensor([1.0]), torch.tensor([0.0])
    # cfg 10 > mimic 7 at progress 0.25: 0.25·10 + 0.75·7
    assert float(combine_cfg(pos, neg, 10.0, 7.0, 0.25)) == pytest.approx(7.75)
    assert float(combine_cfg(pos, neg, 10.0, 7.0, 1.0)) == pytest.approx(10.0)
    # cfg 4 <= mimic 7: plain CFG whatever the progress
    assert float(combine_cfg(pos, neg, 4.0, 7.0, 0.0)) == pytest.approx(4.0)
    assert float(combine_cfg(torch.tensor([3.0]), torch.tensor([1.0]), 2.0, 7.0, 0.5)) == 5.0


def test_bilateral_blur_with_flat_guide_is_a_gaussian_blur() -> None:
    x = torch.zeros(1, 4, 16, 16)
    x[:, :, 8, 8] = 1.0
    out = joint_bilateral_blur(x, torch.zeros_like(x))
    one_d = sum(math.exp(-(k**2) / 18.0) for k in range(-6, 7))
    assert float(out[0, 0, 8, 8]) == pytest.approx(1.0 / one_d**2, rel=1e-5)
    assert float(out[0, 0, 8, 9]) == pytest.approx(math.exp(-1 / 18.0) / one_d**2, rel=1e-5)
    assert torch.allclose(
        joint_bilateral_blur(torch.ones(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)),
        torch.ones(1, 4, 8, 8),
    )


def test_bilateral_blur_does_not_cross_a_strong_guide_edge() -> None:
    x = torch.zeros(1, 4, 16, 16)
    x[..., 8:] = 1.0
    guide = x * 100.0  # L1 distance 400 across the edge: weight exp(-0.5·400²/9) = 0
    out = joint_bilateral_blur(x, guide)
    assert torch.allclose(out, x)
    # A tiny latent (smaller than the window's reach) still works.
    assert joint_bilateral_blur(torch.ones(1, 4, 4, 4), torch.zeros(1, 4, 4, 4)).shape == (
        1,
        4,
        4,
        4,
    )


def test_sharpness_blends_with_alpha_0_001_sharpness_progress() -> None:
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(1, 4, 8, 8, generator=gen)
    x0 = torch.randn(1, 4, 8, 8, generator=gen)
    assert torch.equal(sharpen_eps(eps, x0, 2.0, 0.0), eps)
    std, mean = torch.std_mean(x0, dim=(1, 2, 3), keepdim=True)
    blurred = joint_bilateral_blur(eps, (x0 - mean) / (std + 1e-5))
    alpha = 0.001 * 20.0 * 0.5
    assert torch.allclose(sharpen_eps(eps, x0, 20.0, 0.5), alpha * blurred + (1 - alpha) * eps)


def test_adm_time_ids_follow_fooocus_sizes() -> None:
    pos = AdmTimeIds.for_size(896, 1152, 1.5)
    neg = AdmTimeIds.for_size(896, 1152, 0.8)
    assert pos.emphasized == (1344, 1728, 0, 0, 896, 1152)
    assert neg.emphasized == (716, 921, 0, 0, 896, 1152)
    assert pos.consistent == neg.consistent == (896, 1152, 0, 0, 896, 1152)
    assert pos.pick(700, 0.3) == pos.emphasized  # 700 > 999·0.7 = 699.3
    assert pos.pick(699, 0.3) == pos.consistent
    assert pos.pick(999, 0.0) == pos.consistent  # end 0: never emphasized
    assert round_to_64(1000) == 1024
    assert round_to_64(96) == 128
    assert round_to_64(160) == 128


class FakeUNet:
    """Returns eps = 1 for the positive batch entry and 0 for the negative; records every call."""

    dtype = torch.float32

    def __init__(self) -> None:
        self.calls: list[dict[str, torch.Tensor]] = []

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor],
    ) -> SimpleNamespace:
        self.calls.append(
            {"sample": sample, "t": timestep, "embeds": encoder_hidden_states, **added_cond_kwargs}
        )
        eps = torch.zeros_like(sample)
        eps[0] = 1.0
        return SimpleNamespace(sample=eps)


def _cond(tokens: int) -> TextConditioning:
    return TextConditioning(torch.randn(1, tokens, 8), torch.randn(1, 4))


def _denoiser(unet: FakeUNet, settings: GuidanceSettings, neg_tokens: int = 77) -> FooocusDenoiser:
    return FooocusDenoiser(
        cast(Any, unet),
        NoiseSchedule(),
        settings,
        _cond(77),
        _cond(neg_tokens),
        AdmTimeIds.for_size(64, 64, 1.5),
        AdmTimeIds.for_size(64, 64, 0.8),
    )


def test_guidance_one_runs_only_the_positive_pass() -> None:
    unet = FakeUNet()
    denoiser = _denoiser(unet, GuidanceSettings(guidance_scale=1.0, sharpness=2.0))
    x = torch.full((1, 4, 2, 2), 3.0)
    sigma = 2.0
    out = denoiser(x, sigma)
    assert len(unet.calls) == 1
    assert denoiser.unet_calls == 1
    call = unet.calls[0]
    assert call["sample"].shape[0] == 1
    assert torch.allclose(call["sample"], x / math.sqrt(sigma**2 + 1))
    assert float(call["t"][0]) == NoiseSchedule().timestep(sigma)
    assert torch.allclose(out, x - sigma * 1.0)  # denoised = x - sigma·eps


def test_cfg_batches_both_sides_once_and_switches_adm() -> None:
    unet = FakeUNet()
    settings = GuidanceSettings(
        guidance_scale=4.0, sharpness=0.0, adaptive_cfg=7.0, adm_scaler_end=0.3
    )
    denoiser = _denoiser(unet, settings)
    x = torch.zeros(1, 4, 2, 2)
    out = denoiser(x, 14.6)  # t = 999: emphasized ids
    assert len(unet.calls) == 1
    call = unet.calls[0]
    assert call["sample"].shape[0] == 2
    assert call["embeds"].shape == (2, 77, 8)
    assert call["time_ids"].tolist() == [[96.0, 96.0, 0, 0, 64, 64], [51.0, 51.0, 0, 0, 64, 64]]
    # eps_c = 1, eps_u = 0: e = sigma·(0 + 4·(1 - 0)) → denoised = x - 4·sigma
    assert torch.allclose(out, x - 4.0 * 14.6, atol=1e-4)
    denoiser(x, 0.5)  # late: consistent ids for both
    assert unet.calls[1]["time_ids"].tolist() == [[64.0, 64.0, 0, 0, 64, 64]] * 2


def test_cond_lengths_are_repeated_to_a_common_length_or_run_apart() -> None:
    unet = FakeUNet()
    _denoiser(unet, GuidanceSettings(guidance_scale=4.0), neg_tokens=154)(
        torch.zeros(1, 4, 2, 2), 1.0
    )
    assert len(unet.calls) == 1
    assert unet.calls[0]["embeds"].shape == (2, 154, 8)
    unet = FakeUNet()
    _denoiser(unet, GuidanceSettings(guidance_scale=4.0), neg_tokens=77 * 5)(
        torch.zeros(1, 4, 2, 2), 1.0
    )
    assert len(unet.calls) == 2  # a 5x repeat would waste more than separate passes

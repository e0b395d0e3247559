"""Samplers against hand-worked cases, and the seeded noise sources.

The test denoiser is the exact x0 estimate for unit-variance Gaussian data, D(x, s) = x / (s² + 1),
so each step's numbers can be worked out on paper.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.options import SAMPLERS
from engine.sampling import (
    SUPPORTED_SAMPLERS,
    BrownianNoise,
    GaussianNoise,
    NoiseSampler,
    get_sampler,
    initial_noise,
    sample,
    scale_initial_noise,
)
from engine.sampling.samplers import (
    Sampler,
    dpmpp_2m,
    dpmpp_2m_sde,
    dpmpp_sde,
    euler,
    euler_ancestral,
    lcm,
)
from engine.sampling.schedules import NoiseSchedule
from engine.types import EngineInputError, FeatureNotSupportedError


class GaussianDenoiser:
    """D(x, s) = x / (s² + 1); counts calls. Walks the plain SDXL schedule (tcd reads it)."""

    schedule = NoiseSchedule()

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        self.calls.append(sigma)
        return x / (sigma**2 + 1.0)


def zeros(sigma: float, sigma_next: float) -> torch.Tensor:
    return torch.zeros(1, dtype=torch.float64)


def ones(sigma: float, sigma_next: float) -> torch.Tensor:
    return torch.ones(1, dtype=torch.float64)


def run(
    sampler: Sampler, sigmas: list[float], noise: NoiseSampler = zeros, x0: float = 1.0
) -> tuple[float, int]:
    model = GaussianDenoiser()
    steps: list[int] = []
    out = sampler(
        model,
        torch.tensor([x0], dtype=torch.float64),
        sigmas,
        noise,
        lambda i, x, d: steps.append(i),
    )
    assert steps == list(range(len(sigmas) - 1))  # one callback per step
    return float(out), len(model.calls)


def test_euler() -> None:
    # s=2: D=0.2, x = 1 + (1-0.2)/2·(1-2) = 0.6; s=1: D=0.3, x = 0.6 - 0.3 = 0.3
    assert run(euler, [2.0, 1.0, 0.0]) == (pytest.approx(0.3), 2)


def test_euler_ancestral() -> None:
    # s 2→1: sigma_up = sqrt(1·(4-1)/4) = 0.866, sigma_down = 0.5; x = 1 - 0.4·1.5 + 0.866
    first = 1.0 - 0.4 * 1.5 + math.sqrt(0.75)
    # s 1→0: no noise, x = D = first / 2
    assert run(euler_ancestral, [2.0, 1.0, 0.0], ones) == (pytest.approx(first / 2), 2)
    assert run(euler_ancestral, [2.0, 1.0, 0.0], zeros)[0] == pytest.approx(0.4 / 2)


def test_dpmpp_2m() -> None:
    # s=2→1 (first order): x = 0.5·1 + 0.5·0.2 = 0.6
    # s=1→0.5: D=0.3, r=1, blended = 1.5·0.3 - 0.5·0.2 = 0.35, x = 0.5·0.6 + 0.5·0.35 = 0.475
    # s=0.5→0: x = D = 0.475 / 1.25 = 0.38
    assert run(dpmpp_2m, [2.0, 1.0, 0.5, 0.0]) == (pytest.approx(0.38), 3)


def test_dpmpp_2m_sde() -> None:
    # s=2→1, h=ln2: x = (1/2)·(1/2)·1 + (1-1/4)·0.2 = 0.4, noise std 1·sqrt(0.75)
    assert run(dpmpp_2m_sde, [2.0, 1.0, 0.0], ones)[0] == pytest.approx((0.4 + math.sqrt(0.75)) / 2)
    # Midpoint correction on the second step (s=3→1.5→0.5, x0 = 2, zero noise):
    x, d0 = 2.0, 2.0 / 10.0
    h = math.log(2.0)
    x = 0.5 * math.exp(-h) * x + (1 - math.exp(-2 * h)) * d0
    d1 = x / (1.5**2 + 1)
    h2 = math.log(3.0)
    w = 1 - math.exp(-2 * h2)
    x = (1 / 3) * math.exp(-h2) * x + w * d1 + 0.5 * w / (h / h2) * (d1 - d0)
    x = x / 1.25
    assert run(dpmpp_2m_sde, [3.0, 1.5, 0.5, 0.0], zeros, x0=2.0) == (pytest.approx(x), 3)


def test_dpmpp_sde_two_calls_per_step_and_euler_last() -> None:
    # s 2→1: midpoint sqrt2, split 2→sqrt2 gives up=1, down=1: x_mid = 0.5 + 0.5·0.2 (+1 noise)
    # D_mid = x_mid/3; split 2→1 gives down=0.5, up=0.866: x = 0.25 + 0.75·D_mid (+0.866)
    # s 1→0: Euler, x = D = x/2
    x_mid = 0.6 + 1.0
    x = 0.25 + 0.75 * x_mid / 3 + math.sqrt(0.75)
    assert run(dpmpp_sde, [2.0, 1.0, 0.0], ones) == (pytest.approx(x / 2), 3)
    assert run(dpmpp_sde, [2.0, 1.0, 0.0], zeros) == (pytest.approx(0.2), 3)


def test_lcm() -> None:
    # s=2: x = D + 1·noise = 0.2 + 1; s=1: x = D = 1.2/2
    assert run(lcm, [2.0, 1.0, 0.0], ones) == (pytest.approx(0.6), 2)


def test_every_listed_sampler_is_supported_or_refused_by_name() -> None:
    for name in SAMPLERS:
        if name in SUPPORTED_SAMPLERS:
            assert get_sampler(name).name == name
            continue
        with pytest.raises(FeatureNotSupportedError) as info:
            get_sampler(name)
        assert info.value.field == "sampler_name"
        assert f"sampler '{name}' is not supported yet" in info.value.message
    with pytest.raises(EngineInputError):
        get_sampler("made_up")


@pytest.mark.parametrize("name", SUPPORTED_SAMPLERS)
def test_sample_is_deterministic_per_seed(name: str) -> None:
    sigmas = [14.6, 3.0, 0.8, 0.1, 0.0]
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    model = GaussianDenoiser()
    a = sample(name, model, x, sigmas, seed=3)
    b = sample(name, model, x, sigmas, seed=3)
    c = sample(name, model, x, sigmas, seed=4)
    assert torch.equal(a, b)
    # Restart only re-noises from 20 steps up (its restart segments); see test_samplers_more.
    stochastic = get_sampler(name).noise != "none" and name != "restart"
    assert (not torch.equal(a, c)) == stochastic


def test_initial_noise_matches_torch_manual_seed_and_is_scaled() -> None:
    torch.manual_seed(123)
    expected = torch.randn(1, 4, 2, 2)
    assert torch.equal(initial_noise(123, (1, 4, 2, 2)), expected)
    unit = torch.ones(1)
    assert float(scale_initial_noise(unit, 14.6146, 14.6146)) == pytest.approx(
        math.sqrt(1 + 14.6146**2)
    )
    assert float(scale_initial_noise(unit, 3.0, 14.6146)) == pytest.approx(3.0)
    assert float(scale_initial_noise(unit, 3.0, 14.6146, torch.full((1,), 0.5))) == pytest.approx(
        3.5
    )


def test_brownian_noise_is_seeded_unit_variance_and_additive() -> None:
    like = torch.zeros(1, 4, 32, 32)
    a = BrownianNoise(like, 0.03, 14.6, seed=7)
    b = BrownianNoise(like, 0.03, 14.6, seed=7)
    c = BrownianNoise(like, 0.03, 14.6, seed=8)
    assert torch.equal(a(14.6, 3.0), b(14.6, 3.0))
    assert not torch.equal(a(14.6, 3.0), c(14.6, 3.0))
    assert float(a(5.0, 2.0).std()) == pytest.approx(1.0, abs=0.1)
    # W(5→1) = W(5→2) + W(2→1), each returned increment being divided by sqrt(interval).
    whole = a(5.0, 1.0) * math.sqrt(4.0)
    parts = a(5.0, 2.0) * math.sqrt(3.0) + a(2.0, 1.0) * math.sqrt(1.0)
    assert torch.allclose(whole, parts, atol=1e-4)


def test_gaussian_noise_is_seeded() -> None:
    like = torch.zeros(1, 4, 2, 2)
    first = GaussianNoise(like, 5)(1.0, 0.5)
    assert torch.equal(first, GaussianNoise(like, 5)(1.0, 0.5))
    assert not torch.equal(first, GaussianNoise(like, 6)(1.0, 0.5))

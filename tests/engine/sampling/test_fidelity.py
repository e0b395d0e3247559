"""Where an independent comparison with Fooocus found us apart (issue 12, items 1-6), each pinned.

Every expected value is computed here from the rule Fooocus follows, not read back from the engine.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.inpaint.patch import BlendingDenoiser
from engine.sampling import SAMPLER_SPECS, build_sigmas, initial_noise, make_noise, sample
from engine.sampling.higher_order import TCD_GAMMA, tcd
from engine.sampling.noise import BrownianNoise
from engine.sampling.samplers import dpmpp_sde
from engine.sampling.schedules import (
    AYS_SDXL_SIGMAS,
    NoiseSchedule,
    nearest_index,
    schedule_for,
    training_sigmas,
)

SEED = 1234
SHAPE = (1, 4, 32, 32)
GAUSSIAN_SAMPLERS = sorted(name for name, spec in SAMPLER_SPECS.items() if spec.noise == "gaussian")


class _Toy:
    """D(x, s) = x / (s² + 1) on a given schedule."""

    def __init__(self, schedule: NoiseSchedule | None = None) -> None:
        self.schedule = schedule or NoiseSchedule()

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return x / (sigma**2 + 1.0)


class _Recording:
    """A noise source that records what it was asked for and hands out another's noise."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.draws: list[torch.Tensor] = []
        self.times: list[tuple[float, float]] = []

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        self.times.append((sigma, sigma_next))
        noise = self.inner(sigma, sigma_next)  # type: ignore[operator]
        self.draws.append(noise)
        return noise


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


# --- 1. the first step's noise is not the initial noise ---------------------------------------


@pytest.mark.parametrize("name", GAUSSIAN_SAMPLERS)
def test_step_noise_is_independent_of_the_initial_noise(name: str) -> None:
    start = initial_noise(SEED, SHAPE)
    sigmas = build_sigmas("karras", 24, NoiseSchedule()).tolist()
    x = start * math.sqrt(1.0 + sigmas[0] ** 2)
    recorder = _Recording(make_noise("gaussian", x, sigmas, SEED))
    sample(name, _Toy(), x, sigmas, seed=SEED, noise=recorder)
    assert recorder.draws, f"{name} drew no noise"
    assert abs(_corr(recorder.draws[0], start)) < 0.05
    # Still fully determined by the seed: the seed's CPU stream after the initial draw (what
    # Fooocus's global generator gives on the CPU after prepare_noise).
    generator = torch.Generator().manual_seed(SEED)
    torch.randn(SHAPE, generator=generator)
    assert torch.equal(recorder.draws[0], torch.randn(SHAPE, generator=generator))


def test_brownian_step_noise_is_independent_of_the_initial_noise() -> None:
    start = initial_noise(SEED, SHAPE)
    noise = make_noise("brownian", start, [14.6, 5.0, 0.03, 0.0], SEED)
    assert abs(_corr(noise(14.6, 5.0), start)) < 0.05


# --- 2. tcd reads the schedule through every wrapper ------------------------------------------


def _tcd_times(model: object, sigmas: list[float]) -> list[int]:
    """The s-timesteps tcd jumps to on the schedule the model (or wrapper) carries."""
    schedule: NoiseSchedule = model.schedule  # type: ignore[attr-defined]
    return [math.floor((1 - TCD_GAMMA) * schedule.timestep(s)) for s in sigmas[:-1]]


def test_tcd_under_the_inpaint_blend_uses_the_distilled_schedule() -> None:
    schedule, rule = schedule_for("tcd")
    sigmas = build_sigmas(rule, 8, schedule).tolist()
    inner = _Toy(schedule)
    fill = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    mask = torch.ones(1, 1, 2, 2, dtype=torch.float64)  # paint everywhere: blend is a no-op
    blended = BlendingDenoiser(inner, fill, mask, seed=3)
    assert blended.schedule is schedule
    # Fooocus's s-timesteps on the distilled grid: 699, 615, 531, 447, ...
    assert _tcd_times(blended, sigmas)[:4] == [699, 615, 531, 447]
    x = torch.full((1, 1, 2, 2), 3.0, dtype=torch.float64)

    def unit(sigma: float, sigma_next: float) -> torch.Tensor:
        return torch.ones(1, 1, 2, 2, dtype=torch.float64)

    direct = tcd(inner, x, sigmas, unit, lambda *a: None)
    through = tcd(blended, x, sigmas, unit, lambda *a: None)
    assert torch.allclose(direct, through, rtol=1e-12)


def test_a_model_without_a_schedule_is_refused_by_tcd() -> None:
    def bare(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return x

    with pytest.raises(TypeError, match="no noise schedule"):
        tcd(bare, torch.zeros(1), [2.0, 0.0], lambda a, b: torch.zeros(1), lambda *a: None)


# --- 3. align_your_steps: the published levels ------------------------------------------------


def test_align_your_steps_uses_the_ten_digit_levels() -> None:
    assert AYS_SDXL_SIGMAS[0] == 14.6146412293
    assert AYS_SDXL_SIGMAS[-1] == 0.0291671582
    levels = np.array(AYS_SDXL_SIGMAS)
    for steps in (7, 10, 25):
        # Fooocus's loglinear_interp: np.interp of log levels on an even grid over [0, 1].
        ys = np.exp(
            np.interp(np.linspace(0, 1, steps + 1), np.linspace(0, 1, 11), np.log(levels[::-1]))
        )[::-1].copy()
        ys[-1] = 0.0
        expected = torch.tensor(ys if steps != 10 else [*levels[:-1], 0.0], dtype=torch.float32)
        got = build_sigmas("align_your_steps", steps, NoiseSchedule())
        assert torch.allclose(got, expected, rtol=2e-7, atol=0.0), steps


# --- 4. the Brownian tree lives on the latent's device ----------------------------------------


@pytest.mark.parametrize("base", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_every_sde_sampler_builds_its_tree_on_the_latents_device(base: str) -> None:
    assert SAMPLER_SPECS[base].noise == SAMPLER_SPECS[f"{base}_gpu"].noise == "brownian"
    like = torch.zeros(1, 4, 4, 4)
    noise = make_noise(SAMPLER_SPECS[base].noise, like, [14.6, 1.0, 0.0], SEED)
    assert isinstance(noise, BrownianNoise)
    assert noise.tree_device == like.device


# --- 5. dpmpp_sde's step times in the latents' dtype ------------------------------------------


def test_dpmpp_sde_queries_the_tree_at_float32_times() -> None:
    schedule = NoiseSchedule()
    sigmas_t = build_sigmas("karras", 30, schedule)
    x = torch.zeros(1, 4, 4, 4)
    recorder = _Recording(make_noise("brownian", x, sigmas_t.tolist(), SEED))
    dpmpp_sde(_Toy(), x, sigmas_t.tolist(), recorder, lambda *a: None)
    expected: list[tuple[float, float]] = []
    for i in range(len(sigmas_t) - 2):
        # Fooocus: t = -log sigma, s = t + h/2, sigma_fn(t) = exp(-t), all on float32 tensors.
        t, t_next = sigmas_t[i].log().neg(), sigmas_t[i + 1].log().neg()
        s = t + (t_next - t) * 0.5
        expected += [
            (float(t.neg().exp()), float(s.neg().exp())),
            (float(t.neg().exp()), float(t_next.neg().exp())),
        ]
    assert recorder.times == expected
    # And each is a float32 value, as the tree sees it.
    assert all(float(torch.tensor(a, dtype=torch.float32)) == a for pair in expected for a in pair)


# --- 6. one rule for sigma -> timestep --------------------------------------------------------


def test_an_exact_log_midpoint_goes_to_the_lower_index() -> None:
    # log 2 is exactly halfway between log 1 and log 4 in float32 too (log 4 = 2·log 2 exactly).
    table = torch.tensor([1.0, 4.0, 16.0], dtype=torch.float64).log().float()
    assert nearest_index(table, 2.0) == 0
    assert nearest_index(table, 8.0) == 1
    assert nearest_index(table, 2.01) == 1
    assert nearest_index(table, 1.99) == 0


def test_the_schedules_break_exact_ties_toward_the_lower_timestep() -> None:
    schedule = NoiseSchedule()
    schedule.sigmas = torch.tensor([1.0, 4.0, 16.0])
    schedule.log_sigmas = schedule.sigmas.double().log().float()
    assert schedule.timestep(2.0) == 0
    assert schedule.timestep(8.0) == 1
    distilled = NoiseSchedule(distilled=True)
    distilled.sigmas = torch.tensor([1.0, 4.0, 16.0])
    distilled.log_sigmas = distilled.sigmas.double().log().float()
    assert distilled.timestep(2.0) == 19
    assert distilled.timestep(8.0) == 39


def test_nearest_timestep_of_the_training_sigmas_is_their_own() -> None:
    schedule = NoiseSchedule()
    sigmas = training_sigmas()
    for t in (0, 1, 250, 500, 998, 999):
        assert schedule.timestep(float(sigmas[t])) == t

"""Noise schedule and sigma lists against values worked out from the formulas (2.2-2.3)."""

from __future__ import annotations

import math

import pytest

from engine.sampling import NoiseSchedule, build_sigmas, schedule_for, training_sigmas
from engine.types import EngineInputError

SCHEDULE = NoiseSchedule()


def _sigma_at(index: int) -> float:
    # sigma(t) = sqrt((1 - abar_t) / abar_t), betas linear in sqrt(beta) from 0.00085 to 0.012.
    start, end = 0.00085**0.5, 0.012**0.5
    abar = 1.0
    for k in range(index + 1):
        beta = (start + (end - start) * k / 999) ** 2
        abar *= 1.0 - beta
    return math.sqrt((1.0 - abar) / abar)


def _close(values: list[float], expected: list[float]) -> None:
    assert len(values) == len(expected)
    for got, want in zip(values, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_training_sigmas_match_the_closed_form() -> None:
    sigmas = training_sigmas()
    assert sigmas.shape == (1000,)
    assert float(sigmas[0]) == pytest.approx(0.029168, rel=1e-4)
    assert float(sigmas[-1]) == pytest.approx(14.6146, rel=1e-4)
    for index in (0, 1, 250, 999):
        assert float(sigmas[index]) == pytest.approx(_sigma_at(index), rel=1e-5)


def test_timestep_is_the_nearest_log_sigma_and_sigma_interpolates_log_linearly() -> None:
    assert SCHEDULE.timestep(SCHEDULE.sigma_max) == 999
    assert SCHEDULE.timestep(SCHEDULE.sigma_min) == 0
    s10, s11 = _sigma_at(10), _sigma_at(11)
    assert SCHEDULE.timestep(math.sqrt(s10 * s11) * 0.999) == 10
    assert SCHEDULE.timestep(math.sqrt(s10 * s11) * 1.001) == 11
    assert SCHEDULE.sigma(10.5) == pytest.approx(math.sqrt(s10 * s11), rel=1e-5)
    assert SCHEDULE.sigma(10.25) == pytest.approx(s10**0.75 * s11**0.25, rel=1e-5)


def test_normal_spaces_timesteps_evenly_including_both_ends() -> None:
    expected = [_sigma_at(999), math.sqrt(_sigma_at(499) * _sigma_at(500)), _sigma_at(0), 0.0]
    _close(build_sigmas("normal", 3, SCHEDULE).tolist(), expected)


def test_sgm_uniform_drops_the_last_of_n_plus_one_timesteps() -> None:
    # t = 999, 749.25, 499.5, 249.75
    def frac(t: float) -> float:
        low, w = math.floor(t), t - math.floor(t)
        return math.exp((1 - w) * math.log(_sigma_at(low)) + w * math.log(_sigma_at(low + 1)))

    expected = [_sigma_at(999), frac(749.25), frac(499.5), frac(249.75), 0.0]
    _close(build_sigmas("sgm_uniform", 4, SCHEDULE).tolist(), expected)


def test_karras_uses_rho_7_between_the_model_extremes() -> None:
    lo, hi = _sigma_at(0) ** (1 / 7), _sigma_at(999) ** (1 / 7)
    expected = [(hi + k / 2 * (lo - hi)) ** 7 for k in range(3)] + [0.0]
    _close(build_sigmas("karras", 3, SCHEDULE).tolist(), expected)


def test_exponential_is_geometric() -> None:
    hi, lo = _sigma_at(999), _sigma_at(0)
    _close(build_sigmas("exponential", 3, SCHEDULE).tolist(), [hi, math.sqrt(hi * lo), lo, 0.0])


def test_simple_and_ddim_uniform_pick_training_sigmas() -> None:
    _close(
        build_sigmas("simple", 4, SCHEDULE).tolist(),
        [_sigma_at(999), _sigma_at(749), _sigma_at(499), _sigma_at(249), 0.0],
    )
    _close(
        build_sigmas("ddim_uniform", 3, SCHEDULE).tolist(),
        [_sigma_at(667), _sigma_at(334), _sigma_at(1), 0.0],
    )
    # 1000 is not a multiple of 30: stride 33 gives 31 sigmas, as in Fooocus.
    assert len(build_sigmas("ddim_uniform", 30, SCHEDULE)) == 32


def test_turbo_and_align_your_steps() -> None:
    _close(
        build_sigmas("turbo", 3, SCHEDULE).tolist(),
        [_sigma_at(999), _sigma_at(899), _sigma_at(799), 0.0],
    )
    with pytest.raises(EngineInputError) as info:
        build_sigmas("turbo", 11, SCHEDULE)
    assert info.value.field == "scheduler_name"
    # The published SDXL levels (NVIDIA's AYS table, as Fooocus has them), without the last.
    levels = [
        14.6146412293,
        6.3184485287,
        3.7681790315,
        2.1811480769,
        1.3405244945,
        0.8620721141,
        0.5550693289,
        0.3798540708,
        0.2332364134,
        0.1114188177,
    ]
    _close(build_sigmas("align_your_steps", 10, SCHEDULE).tolist(), [*levels, 0.0])
    # 5 steps: the 6-point grid lands exactly on every second published level.
    _close(build_sigmas("align_your_steps", 5, SCHEDULE).tolist(), [*levels[::2], 0.0])


def test_lcm_scheduler_uses_the_distilled_grid_and_lcm_output() -> None:
    schedule, rule = schedule_for("lcm")
    assert rule == "sgm_uniform"
    sigmas = build_sigmas(rule, 8, schedule)
    timesteps = [schedule.timestep(float(s)) for s in sigmas[:-1]]
    # Step 4 sits on grid position 24.5, an exact log-midpoint of timesteps 499 and 519: which
    # neighbour float32 rounding lands it on is the tie rule's business (pinned on exact ties in
    # test_fidelity), not this test's; every other step is far from a tie.
    assert timesteps[:4] == [999, 879, 759, 639]
    assert timesteps[4] in (499, 519)
    assert timesteps[5:] == [379, 259, 139]
    assert schedule.sigma_min == pytest.approx(_sigma_at(19), rel=1e-5)

    import torch

    sigma = float(sigmas[2])  # timestep 759
    x, eps = torch.tensor([2.0]), torch.tensor([0.5])
    scaled = 759 * 10.0
    c_skip = 0.25 / (scaled**2 + 0.25)
    c_out = scaled / math.sqrt(scaled**2 + 0.25)
    expected = c_out * (2.0 - sigma * 0.5) + c_skip * 2.0
    assert float(schedule.denoised(x, sigma, eps)) == pytest.approx(expected, rel=1e-6)
    tcd, _ = schedule_for("tcd")
    assert float(tcd.denoised(x, sigma, eps)) == pytest.approx(2.0 - sigma * 0.5)


def test_unknown_schedulers_are_refused() -> None:
    with pytest.raises(EngineInputError) as info:
        build_sigmas("nope", 4, SCHEDULE)
    assert info.value.field == "scheduler_name"

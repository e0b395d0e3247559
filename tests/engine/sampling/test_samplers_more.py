"""The samplers beyond the first nine, each on a hand-worked case, plus convergence to the exact
solution. As in test_sampling, the denoiser is exact for unit-variance Gaussian data,
D(x, s) = x / (s² + 1), whose probability-flow ODE solution is x(s) = x(s0)·sqrt((1+s²)/(1+s0²)).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from engine.sampling import SUPPORTED_SAMPLERS, get_sampler, sample
from engine.sampling.dpm_solver import dpm_adaptive, dpm_fast, fast_orders
from engine.sampling.higher_order import (
    ddpm,
    dpm_2,
    dpm_2_ancestral,
    dpmpp_2s_ancestral,
    dpmpp_3m_sde,
    heun,
    heunpp2,
    lms,
    lms_coefficients,
    restart,
    restart_plan,
    tcd,
)
from engine.sampling.samplers import dpmpp_2m_sde, euler_ancestral
from engine.sampling.schedules import NoiseSchedule, build_sigmas, training_sigmas
from engine.sampling.unipc import uni_pc, uni_pc_bh2
from tests.engine.sampling.test_sampling import GaussianDenoiser, ones, run, zeros


def test_heun() -> None:
    # s 2→1: d = (1-0.2)/2 = 0.4, x2 = 0.6, d2 = (0.6-0.3)/1 = 0.3, x = 1 - (0.4+0.3)/2 = 0.65
    # s 1→0: Euler, x = D = 0.325
    assert run(heun, [2.0, 1.0, 0.0]) == (pytest.approx(0.325), 3)


def test_heunpp2_two_and_three_stage_steps() -> None:
    # Heun-weighted step: w2 = 1/(2·2) = 0.25, x = 1 - (0.75·0.4 + 0.25·0.3) = 0.625; then Euler.
    assert run(heunpp2, [2.0, 1.0, 0.0]) == (pytest.approx(0.3125), 3)
    # Three stages from s=3: d = 0.9/3 = 0.3; x2 = 0.7, d2 = (0.7-0.14)/2 = 0.28;
    # x3 = 0.42, d3 = (0.42-0.21)/1 = 0.21; weights 6/9, 2/9, 1/9 → x = 1 - 2.57/9.
    x = 1 - 2.57 / 9
    # Then s 2→1 (Heun-weighted, w2 = 1/6) and s 1→0 (Euler).
    d = (x - x / 5) / 2
    x2 = x - d
    d2 = x2 - x2 / 2
    x = x - (d * 5 / 6 + d2 / 6)
    assert run(heunpp2, [3.0, 2.0, 1.0, 0.0]) == (pytest.approx(x / 2), 6)


def test_dpm_2_uses_the_log_midpoint_slope() -> None:
    # s 2→1: midpoint sqrt2, x2 = 1 + 0.4(sqrt2 - 2), d2 = (x2 - x2/3)/sqrt2, x = 1 - d2
    x2 = 1 + 0.4 * (math.sqrt(2) - 2)
    x = 1 - (x2 - x2 / 3) / math.sqrt(2)
    assert run(dpm_2, [2.0, 1.0, 0.0]) == (pytest.approx(x / 2), 3)


def test_dpm_2_ancestral() -> None:
    # s 2→1: sigma_down 0.5, sigma_up sqrt(0.75); midpoint 1: x2 = 0.6, d2 = 0.3,
    # x = 1 + 0.3·(0.5-2) = 0.55, plus noise·sqrt(0.75); s 1→0: Euler, x/2.
    assert run(dpm_2_ancestral, [2.0, 1.0, 0.0], ones) == (
        pytest.approx((0.55 + math.sqrt(0.75)) / 2),
        3,
    )


def test_lms_weights_and_steps() -> None:
    # Nodes 1 and 2 on [1, 0]: ∫(2-s) = -1.5 and ∫(s-1) = 0.5.
    assert lms_coefficients([2.0, 1.0, 0.0], 1, 2) == pytest.approx([-1.5, 0.5])
    assert lms_coefficients([2.0, 1.0, 0.0], 0, 1) == pytest.approx([-1.0])
    # x = 0.6 after Euler; then 0.6 - 1.5·0.3 + 0.5·0.4 = 0.35
    assert run(lms, [2.0, 1.0, 0.0]) == (pytest.approx(0.35), 2)


def test_dpmpp_2s_ancestral() -> None:
    # s 2→1 (sigma_down 0.5, h = ln 4, midpoint 1): x2 = 0.5 + 0.5·0.2 = 0.6, D2 = 0.3,
    # x = 0.25 + 0.75·0.3 = 0.475 (+ sqrt(0.75)·noise); s 1→0: Euler, x/2.
    assert run(dpmpp_2s_ancestral, [2.0, 1.0, 0.0], zeros) == (pytest.approx(0.2375), 3)
    assert run(dpmpp_2s_ancestral, [2.0, 1.0, 0.0], ones)[0] == pytest.approx(
        (0.475 + math.sqrt(0.75)) / 2
    )


def test_dpmpp_3m_sde() -> None:
    # Its first step is DPM++(2M) SDE's first step.
    assert run(dpmpp_3m_sde, [2.0, 1.0, 0.0], ones) == run(dpmpp_2m_sde, [2.0, 1.0, 0.0], ones)
    # Third order from the third step: s 4 → 2 → 1 → 0.5 → 0, x0 = 3, zero noise.
    x = 3.0
    history: list[tuple[float, float]] = []
    for s, s_next in ((4.0, 2.0), (2.0, 1.0), (1.0, 0.5)):
        d = x / (s**2 + 1)
        h = math.log(s / s_next)
        x = math.exp(-2 * h) * x + (1 - math.exp(-2 * h)) * d
        phi_2 = math.expm1(-2 * h) / (2 * h) + 1
        if len(history) == 1:
            x += phi_2 * (d - history[0][0]) / (history[0][1] / h)
        elif len(history) == 2:
            (d_1, h_1), (d_2, h_2) = history
            r0, r1 = h_1 / h, h_2 / h
            d1_0, d1_1 = (d - d_1) / r0, (d_1 - d_2) / r1
            x += phi_2 * (d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1))
            x -= (phi_2 / (2 * h) - 0.5) * (d1_0 - d1_1) / (r0 + r1)
        history = [(d, h), *history][:2]
    expected = x / 1.25
    assert run(dpmpp_3m_sde, [4.0, 2.0, 1.0, 0.5, 0.0], zeros, x0=3.0) == (
        pytest.approx(expected),
        4,
    )


def test_ddpm_equals_euler_ancestral() -> None:
    # The DDPM posterior in sigma space is exactly an Euler-ancestral step (eta 1).
    sigmas = [5.0, 2.0, 0.7, 0.0]
    assert run(ddpm, sigmas, ones)[0] == pytest.approx(run(euler_ancestral, sigmas, ones)[0])


def test_tcd_last_step_stays_at_timestep_zero() -> None:
    # One step 2 → 0: s = training timestep 0, abar = 1/(1+sigma_0²); D = 0.2, eps = 0.4.
    sigma_0 = float(training_sigmas()[0])
    abar = 1 / (1 + sigma_0**2)
    expected = math.sqrt(abar) * 0.2 + math.sqrt(1 - abar) * 0.4
    assert run(tcd, [2.0, 0.0]) == (pytest.approx(expected), 1)
    # Two steps: the first jumps to s = floor(0.7·t(1.0)) and re-noises up to sigma 1.
    schedule = NoiseSchedule()
    t_s = math.floor(0.7 * schedule.timestep(1.0))
    sigma_s = float(training_sigmas()[t_s])
    abar = 1 / (1 + sigma_s**2)
    x = 0.2 + sigma_s * 0.4 + math.sqrt(1.0 - sigma_s**2) * 1.0  # x0 + sigma_s·eps + noise
    d, e = x / 2, x / 2
    expected = math.sqrt(1 / (1 + sigma_0**2)) * d + math.sqrt(1 - 1 / (1 + sigma_0**2)) * e
    assert run(tcd, [2.0, 1.0, 0.0], ones)[0] == pytest.approx(expected, rel=1e-5)


def test_restart_plan_lengths_and_restart_noise() -> None:
    short = [5.0, 2.0, 1.0, 0.0]
    assert restart_plan(short) == [(5.0, 2.0), (2.0, 1.0), (1.0, 0.0)]
    # Under 20 steps Restart is Heun.
    assert run(restart, short) == run(heun, short)
    schedule = NoiseSchedule()
    for steps in (20, 36):
        sigmas = build_sigmas("karras", steps, schedule).tolist()
        plan = restart_plan(sigmas)
        assert len(plan) == steps
        jumps = sum(1 for a, b in itertools.pairwise(plan) if b[0] > a[1])
        assert jumps == (1 if steps == 20 else 2)
    sigmas = build_sigmas("karras", 20, schedule).tolist()
    assert run(restart, sigmas, zeros)[0] != run(restart, sigmas, ones)[0]


def test_dpm_fast_orders_and_one_second_order_step() -> None:
    assert fast_orders(10) == [3, 3, 3, 1]
    assert fast_orders(9) == [3, 3, 2, 1]
    assert all(sum(fast_orders(n)) == n for n in range(1, 40))
    # Two steps = one order-2 step from sigma 2 to sigma_min 0.5 (the final 0 is not reached):
    # eps = 0.4; midpoint sigma 1: u = 1 - 1·(2-1)·0.4 = 0.6, eps_r = 0.3;
    # x = 1 - 0.5·3·0.4 - 0.5·3·(0.3-0.4) = 0.55
    model = GaussianDenoiser()
    calls: list[int] = []
    x = torch.ones(1, dtype=torch.float64)
    out = dpm_fast(model, x, [2.0, 0.5, 0.0], zeros, lambda i, x, d: calls.append(i))
    assert (float(out), len(model.calls), calls) == (pytest.approx(0.55), 2, [0])


def test_dpm_adaptive_ignores_the_step_count_and_is_accurate() -> None:
    schedule = NoiseSchedule()
    results = []
    for steps in (5, 30):
        sigmas = build_sigmas("karras", steps, schedule).tolist()
        model = GaussianDenoiser()
        x = torch.full((1, 4, 4, 4), 2.0, dtype=torch.float64)
        results.append(float(dpm_adaptive(model, x, sigmas, zeros, lambda i, x, d: None).mean()))
    assert results[0] == pytest.approx(results[1])
    exact = 2.0 * math.sqrt((1 + schedule.sigma_min**2) / (1 + schedule.sigma_max**2))
    assert results[0] == pytest.approx(exact, rel=0.05)


@pytest.mark.parametrize(("sampler", "b_h"), [(uni_pc, -math.log(2)), (uni_pc_bh2, -0.5)])
def test_unipc_first_order_case(sampler: object, b_h: float) -> None:
    # Two steps → order 1. s 2→1: x_base = 0.5 + 0.5·0.2 = 0.6, model there 0.3,
    # corrector x = 0.6 - B(h)·0.5·(0.3 - 0.2). Last step (to 0.001) predictor only.
    x = 0.6 - b_h * 0.5 * 0.1
    x = 0.001 * x + (1 - 0.001) * 0.3
    assert run(sampler, [2.0, 1.0, 0.0]) == (pytest.approx(x), 2)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [n for n in SUPPORTED_SAMPLERS if get_sampler(n).noise == "none"])
def test_deterministic_samplers_converge_to_the_exact_solution(name: str) -> None:
    schedule = NoiseSchedule()
    sigmas = build_sigmas("karras", 30, schedule).tolist()
    x = torch.full((1, 4, 2, 2), 3.0, dtype=torch.float64)
    out = float(sample(name, GaussianDenoiser(), x, sigmas, seed=0).mean())
    end = sigmas[-1] if sigmas[-1] > 0 else 0.0
    if name == "dpm_fast":
        end = sigmas[-2]  # it stops at sigma_min
    exact = 3.0 * math.sqrt((1 + end**2) / (1 + sigmas[0] ** 2))
    # heunpp2 weighs its extra slopes by sigma/sigma_max, so it stays close to Euler's accuracy.
    assert out == pytest.approx(exact, rel=0.06)

"""engine/options.py is the one registry of option names: the engine's tables agree with it."""

from __future__ import annotations

import pytest

from engine import options
from engine.sampling import SAMPLER_SPECS, build_sigmas, schedule_for
from engine.types import EngineInputError


def test_every_sampler_name_has_a_sampler() -> None:
    assert list(SAMPLER_SPECS) == list(options.SAMPLERS)


@pytest.mark.parametrize("name", options.SCHEDULERS)
def test_every_scheduler_name_builds_sigmas(name: str) -> None:
    schedule, rule = schedule_for(name)
    sigmas = build_sigmas(rule, 4, schedule)
    assert sigmas[-1] == 0.0
    assert bool((sigmas[:-1] > 0).all())


def test_unknown_names_are_refused_by_the_registry() -> None:
    with pytest.raises(EngineInputError) as caught:
        options.check_sampler("made_up")
    assert caught.value.field == "sampler_name"
    with pytest.raises(EngineInputError):
        options.check_scheduler("made_up")
    with pytest.raises(EngineInputError, match="turbo"):
        options.check_scheduler("turbo", options.TURBO_MAX_STEPS + 1)


def test_uov_names_are_built_from_the_vary_and_upscale_tables() -> None:
    assert options.UOV_METHODS == (
        "Disabled",
        "Vary (Subtle)",
        "Vary (Strong)",
        "Upscale (1.5x)",
        "Upscale (2x)",
        "Upscale (Fast 2x)",
        "Upscale (Custom)",
    )
    assert [m for m in options.UOV_METHODS if options.is_vary(m)] == list(options.VARY_STRENGTHS)
    assert [m for m in options.UOV_METHODS if options.is_upscale(m)] == [
        *options.UPSCALE_FACTORS,
        options.CUSTOM_UPSCALE,
    ]
    assert options.FAST_UPSCALE in options.UPSCALE_FACTORS


def test_a1111_sampler_names_are_for_known_samplers() -> None:
    from engine.output.metadata import A1111_SAMPLER_NAMES

    assert set(A1111_SAMPLER_NAMES) <= set(options.SAMPLERS)

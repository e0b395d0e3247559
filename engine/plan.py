"""A request resolved against its performance preset: what will actually run (reference §1)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.guidance import GuidanceSettings
from engine.options import MAX_LORAS, NO_MODEL, PERFORMANCES
from engine.types import EngineInputError, EngineRequest


@dataclass(frozen=True)
class Plan:
    """A request after the performance preset: what will actually run."""

    steps: int
    sampler: str
    scheduler: str
    guidance: GuidanceSettings
    adm_positive: float
    adm_negative: float
    loras: tuple[tuple[str, float], ...]
    refiner: str


def plan_request(request: EngineRequest) -> Plan:
    """Resolve steps, sampler, scheduler, guidance values and LoRAs for ``request`` (§1).

    The LoRA performances append their LoRA (``performance_lora_name`` replaces its file) and
    force guidance 1, sharpness 0, adaptive CFG 1, ADM 1/1/0, their sampler/scheduler, no refiner.
    """
    perf = PERFORMANCES.get(request.performance_selection)
    if perf is None:
        raise EngineInputError(
            "performance_selection", f"unknown performance '{request.performance_selection}'"
        )
    steps = request.overwrite_step if request.overwrite_step > 0 else perf.steps
    loras = tuple(
        (lora.model_name, lora.weight)
        for lora in request.loras
        if lora.enabled and lora.model_name != NO_MODEL
    )[:MAX_LORAS]
    refiner = request.refiner_model_name
    if refiner == request.base_model_name:
        refiner = NO_MODEL
    if not perf.restricted:
        guidance = GuidanceSettings(
            request.guidance_scale,
            request.sharpness,
            request.adaptive_cfg,
            request.adm_scaler_end,
        )
        return Plan(
            steps,
            request.sampler_name,
            request.scheduler_name,
            guidance,
            request.adm_scaler_positive,
            request.adm_scaler_negative,
            loras,
            refiner,
        )
    assert perf.lora_file is not None
    assert perf.sampler is not None
    assert perf.scheduler is not None
    lora_file = request.performance_lora_name or perf.lora_file
    guidance = GuidanceSettings(
        guidance_scale=1.0, sharpness=0.0, adaptive_cfg=1.0, adm_scaler_end=0.0
    )
    return Plan(
        steps,
        perf.sampler,
        perf.scheduler,
        guidance,
        1.0,
        1.0,
        (*loras, (lora_file, perf.lora_weight)),
        NO_MODEL,
    )

"""A request resolved against its performance preset: what will actually run (reference §1).

Plain Python (no torch): the request check of :mod:`engine.check` resolves requests with it in
web processes too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from engine.config import (
    CLIP_VISION_FILE,
    CLIP_VISION_FOLDER,
    CONTROL_LORA_FILES,
    CONTROLNET_FOLDER,
    IP_ADAPTER_FILES,
    IP_NEGATIVE_FILE,
)
from engine.options import CN_TYPE_DEFAULTS, MAX_LORAS, NO_MODEL, PERFORMANCES
from engine.prompts.per_image import PromptLines
from engine.prompts.syntax import extract_lora_tags, merge_prompt_loras, split_lines
from engine.types import EngineInputError, EngineRequest

IMAGE_PROMPT_FIELD = "controlnet_image"
"""The API field of the image-prompt slots (errors about a slot name it)."""


@dataclass(frozen=True)
class GuidanceSettings:
    """The per-request guidance knobs (already forced for the LoRA performances)."""

    guidance_scale: float = 4.0
    sharpness: float = 2.0
    adaptive_cfg: float = 7.0
    adm_scaler_end: float = 0.3


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
    lines: PromptLines
    """The prompt lines, ``<lora:...>`` tags taken out of the main line."""
    switch: int
    """The step index after whose model call the refiner takes over (>= steps: never)."""


def refiner_switch_step(performance_steps: int, refiner_switch: float, overwrite: float) -> int:
    """int(round(steps · refiner_switch)) with Python's round (ties to even: 30 · 0.75 → 22),
    from the performance's step count (before overwrite_step), or ``overwrite`` when > 0 (§4)."""
    if overwrite > 0:
        return int(overwrite)
    return round(performance_steps * refiner_switch)


def plan_request(request: EngineRequest, lora_files: Sequence[str] = ()) -> Plan:
    """Resolve steps, sampler, scheduler, guidance values and LoRAs for ``request`` (§1).

    The LoRA performances append their LoRA (``performance_lora_name`` replaces its file) and
    force guidance 1, sharpness 0, adaptive CFG 1, ADM 1/1/0, their sampler/scheduler, no refiner.
    ``lora_files`` are the LoRA files ``<lora:name:weight>`` tags of the main line may name
    (the performance LoRA excluded).
    """
    perf = PERFORMANCES.get(request.performance_selection)
    if perf is None:
        raise EngineInputError(
            "performance_selection", f"unknown performance '{request.performance_selection}'"
        )
    steps = request.overwrite_step if request.overwrite_step > 0 else perf.steps
    main, extras = split_lines(request.prompt)
    negative_main, negative_extras = split_lines(request.negative_prompt)
    performance_file = request.performance_lora_name or perf.lora_file
    taggable = [f for f in lora_files if Path(f).name != performance_file]
    main, tagged = extract_lora_tags(main, taggable)
    lines = PromptLines(main, tuple(extras), negative_main, tuple(negative_extras))
    loras = tuple(
        (lora.model_name, lora.weight)
        for lora in request.loras
        if lora.enabled and lora.model_name != NO_MODEL
    )[:MAX_LORAS]
    loras = merge_prompt_loras(loras, tagged, MAX_LORAS)
    refiner = request.refiner_model_name
    if refiner == request.base_model_name:
        refiner = NO_MODEL
    switch = refiner_switch_step(perf.steps, request.refiner_switch, request.overwrite_switch)
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
            lines,
            switch if refiner != NO_MODEL else steps,
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
        lines,
        steps,
    )


@dataclass(frozen=True)
class Slot:
    """One image prompt with its type's defaults filled in."""

    image: Image.Image
    cn_type: str
    stop: float
    weight: float

    @property
    def is_control(self) -> bool:
        """True for the ControlNet types (PyraCanny, CPDS)."""
        return self.cn_type in CONTROL_LORA_FILES


def resolve_slots(request: EngineRequest) -> list[Slot]:
    """The request's image prompts; a None stop or weight takes its type's default."""
    slots = []
    for spec in request.image_prompts:
        if spec.cn_type not in CN_TYPE_DEFAULTS:
            raise EngineInputError(IMAGE_PROMPT_FIELD, f"unknown cn_type '{spec.cn_type}'")
        default_stop, default_weight = CN_TYPE_DEFAULTS[spec.cn_type]
        stop = default_stop if spec.stop is None else float(spec.stop)
        weight = default_weight if spec.weight is None else float(spec.weight)
        slots.append(Slot(spec.image, spec.cn_type, stop, weight))
    return slots


def required_files(request: EngineRequest) -> list[tuple[str, str]]:
    """(folder, file) of every model the request's image prompts need."""
    types = {spec.cn_type for spec in request.image_prompts}
    controls = sorted(types & set(CONTROL_LORA_FILES))
    files = [(CONTROLNET_FOLDER, CONTROL_LORA_FILES[t]) for t in controls]
    adapters = sorted(types & set(IP_ADAPTER_FILES))
    if adapters:
        files += [(CLIP_VISION_FOLDER, CLIP_VISION_FILE), (CONTROLNET_FOLDER, IP_NEGATIVE_FILE)]
        files += [(CONTROLNET_FOLDER, IP_ADAPTER_FILES[t]) for t in adapters]
    return files

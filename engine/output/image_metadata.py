"""The :class:`~engine.output.metadata.ImageMetadata` of one generated image.

Built from its request and plan; kept apart from :mod:`engine.output.metadata`, which only
formats and embeds metadata and knows nothing of requests, plans or model files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.options import NO_MODEL
from engine.output.metadata import FileHasher, ImageMetadata, LoraRecord
from engine.plan import Plan
from engine.prompts.per_image import ImageTask
from engine.types import EngineRequest

if TYPE_CHECKING:
    from engine.models.source import ModelSource


def model_hashes(
    manager: ModelSource, hasher: FileHasher, request: EngineRequest, plan: Plan
) -> dict[tuple[str, str], str]:
    """Short hashes of the model and LoRA files, keyed by (folder, name).

    Computed when the first image is done (hashing a large checkpoint the first time takes
    seconds; the hasher caches it for later tasks).
    """
    wanted = [("checkpoints", request.base_model_name)]
    if plan.refiner != NO_MODEL:
        wanted.append(("checkpoints", plan.refiner))
    wanted += [("loras", name) for name, _ in plan.loras]
    return {key: hasher.short_hash(manager.require(*key)) for key in wanted}


def image_metadata(
    request: EngineRequest,
    plan: Plan,
    task: ImageTask,
    steps: int,
    hashes: dict[tuple[str, str], str],
) -> ImageMetadata:
    """What one image records of how it was made: prompts, settings, models and their hashes."""
    freeu_values = (
        (request.freeu_b1, request.freeu_b2, request.freeu_s1, request.freeu_s2)
        if request.freeu_enabled
        else None
    )
    return ImageMetadata(
        prompt=task.log_prompt,
        negative_prompt=task.log_negative_prompt,
        full_prompt=task.positive,
        full_negative_prompt=task.negative,
        styles=task.styles,
        performance=request.performance_selection,
        steps=steps,
        width=request.width,
        height=request.height,
        guidance_scale=plan.guidance.guidance_scale,
        sharpness=plan.guidance.sharpness,
        adm_guidance=(plan.adm_positive, plan.adm_negative, plan.guidance.adm_scaler_end),
        base_model=request.base_model_name,
        base_model_hash=hashes[("checkpoints", request.base_model_name)],
        sampler=plan.sampler,
        scheduler=plan.scheduler,
        vae=request.vae_name,
        seed=task.seed,
        scheme=request.metadata_scheme,
        refiner_model=plan.refiner,
        refiner_model_hash=hashes.get(("checkpoints", plan.refiner), ""),
        refiner_switch=request.refiner_switch,
        overwrite_switch=request.overwrite_switch,
        refiner_swap_method=request.refiner_swap_method,
        adaptive_cfg=plan.guidance.adaptive_cfg,
        clip_skip=request.clip_skip,
        freeu=freeu_values,
        loras=[LoraRecord(n, w, hashes[("loras", n)]) for n, w in plan.loras],
        expansion=task.expansion,
    )

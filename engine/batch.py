"""Several queued requests sampled as one UNet batch (``FOOOCUS_BATCH_TASKS``).

Requests join a batch when everything the UNet call and the sampler share is the same: base
model, VAE, LoRAs, size, steps, sampler, scheduler, guidance, ADM scales, refiner and its switch,
clip skip, FreeU. Each request keeps its own seeds, prompts, events, stop/skip and result: its
images are prepared by its own :class:`~engine.run.RequestRun`, its steps are reported through its
callback, a "stop" drops its images from the batch at the end of the step run and ends it, a
"skip" drops its images in the running batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from engine.guidance import TextConditioning
from engine.memory import UNET
from engine.models.components import SDXLComponents
from engine.options import NO_MODEL
from engine.prompts.encoding import PromptEncoder
from engine.refiner import sampler_sigmas
from engine.run import (
    LATENT_SCALE,
    UNBATCHED_SAMPLERS,
    RequestRun,
    RunResources,
    _Prepared,
    _stack,
)
from engine.sampling import NoiseSchedule, get_sampler, make_noise, schedule_for
from engine.types import EngineRequest, EngineResult, EventCallback, StopPoll
from engine.uov.rules import tail_sigmas

BATCH_TASKS_ENV = "FOOOCUS_BATCH_TASKS"


@dataclass(frozen=True)
class BatchItem:
    """One request of :meth:`engine.pipeline.Engine.generate_many` with its own callbacks."""

    request: EngineRequest
    on_event: EventCallback | None = None
    should_stop: StopPoll | None = None


def batch_key(run: RequestRun) -> Hashable | None:
    """What requests must share to be sampled together; None when this one cannot join."""
    request, plan = run.request, run.plan
    if (
        request.inpaint_input_image is not None
        or request.uov_method != "Disabled"
        or request.image_prompts
        or plan.sampler in UNBATCHED_SAMPLERS
    ):
        return None
    return (
        request.base_model_name,
        request.vae_name,
        plan.loras,
        request.width,
        request.height,
        plan.steps,
        plan.sampler,
        plan.scheduler,
        plan.guidance,
        plan.adm_positive,
        plan.adm_negative,
        plan.refiner,
        plan.switch if plan.refiner != NO_MODEL else None,
        request.refiner_swap_method,
        request.clip_skip,
        request.freeu_enabled,
        (request.freeu_b1, request.freeu_b2, request.freeu_s1, request.freeu_s2),
    )


def run_together(resources: RunResources, items: Sequence[BatchItem]) -> list[EngineResult]:
    """Run requests that share one :func:`batch_key` as one batched sampling run."""
    runs = [RequestRun(resources, i.request, i.on_event, i.should_stop) for i in items]
    first = runs[0]
    components, refiner, expand = first.load()
    for run in runs[1:]:
        run.latent_format = first.latent_format
        run.report(1, "Loading models ...")
    plan = first.plan
    with torch.inference_mode():
        schedule, rule = schedule_for(plan.scheduler)
        sigmas = tail_sigmas(
            lambda n: sampler_sigmas(plan.sampler, rule, n, schedule), first.steps, first.denoise
        )
        steps = len(sigmas) - 1
        use_cfg = not math.isclose(plan.guidance.guidance_scale, 1.0)
        queue: list[tuple[RequestRun, _Prepared]] = []
        for run in runs:
            run.total_steps = steps * run.request.image_number
            encoder = PromptEncoder(
                components,
                run.request.clip_skip,
                resources.embedding_library(),
                _noter(run),
            )
            for index in range(run.request.image_number):
                run.report(run._step_progress(), f"Preparing task {index + 1} ...")
                item = run._prepare_image(index, encoder, expand, use_cfg, sigmas, schedule)
                queue.append((run, item))
        stopped: set[int] = set()
        size = _batch_size(first, len(queue))
        while queue:
            chunk: list[tuple[RequestRun, _Prepared]] = []
            while queue and len(chunk) < size:
                run, item = queue.pop(0)
                if id(run) in stopped:
                    continue
                if chunk and not _same_shapes(chunk[0][1], item):
                    queue.insert(0, (run, item))
                    break
                chunk.append((run, item))
            if not chunk:
                break
            outcome = _sample_chunk(first, (components, refiner), schedule, sigmas, chunk, stopped)
            for run, item in chunk:
                key = (id(run), item.index)
                if id(run) in stopped or key in outcome.skipped:
                    continue
                count = run.request.image_number
                run._finish_image(components, item, outcome.latents[key], steps, count)
    return [EngineResult(tuple(run.images), stopped=id(run) in stopped) for run in runs]


class _Outcome:
    """The sampled latents of a chunk by (run id, image index), and the skipped ones."""

    def __init__(self) -> None:
        self.latents: dict[tuple[int, int], torch.Tensor] = {}
        self.skipped: set[tuple[int, int]] = set()


def _noter(run: RequestRun) -> Callable[[str], None]:
    return lambda note: run.report(run.progress, note)


def _batch_size(run: RequestRun, wanted: int) -> int:
    placer = run.resources.placer
    if placer.plan is None:
        return wanted
    guided = not math.isclose(run.plan.guidance.guidance_scale, 1.0)
    h, w = run.request.height // LATENT_SCALE, run.request.width // LATENT_SCALE
    return placer.plan.max_batch(h, w, guided=guided, wanted=wanted)


def _same_shapes(a: _Prepared, b: _Prepared) -> bool:
    if a.positive.embeds.shape != b.positive.embeds.shape:
        return False
    if (a.negative is None) != (b.negative is None):
        return False
    if a.negative is None or b.negative is None:
        return True
    return a.negative.embeds.shape == b.negative.embeds.shape


def _sample_chunk(
    lead: RequestRun,
    models: tuple[SDXLComponents, SDXLComponents | None],
    schedule: NoiseSchedule,
    sigmas: list[float],
    chunk: list[tuple[RequestRun, _Prepared]],
    stopped: set[int],
) -> _Outcome:
    """Sample one chunk; poll every request in it at each step (recording stop and skip)."""
    device = lead.resources.placer.device
    items = [item for _, item in chunk]
    positive = _stack([item.positive for item in items])
    negatives: list[TextConditioning | None] = [item.negative for item in items]
    negative = None if negatives[0] is None else _stack(negatives)
    x = torch.cat([item.x for item in items]).to(device)
    kind = get_sampler(lead.plan.sampler).noise
    sources = [make_noise(kind, item.x.to(device), sigmas, item.seed) for item in items]
    steps = len(sigmas) - 1
    outcome = _Outcome()
    members: dict[int, tuple[RequestRun, list[int]]] = {}
    for run, item in chunk:
        members.setdefault(id(run), (run, []))[1].append(item.index)
    base = {key: len(run.images) * steps for key, (run, _) in members.items()}

    def noise(sigma: float, sigma_next: float) -> torch.Tensor:
        return torch.cat([source(sigma, sigma_next) for source in sources])

    def on_step(step: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        shown = min(step + 1, steps)
        for key, (run, indices) in members.items():
            if key in stopped:
                continue
            run.done_steps = base[key] + shown * len(indices)
            count = run.request.image_number
            message = f"Sampling step {shown}/{steps}, images {indices[0] + 1}-{indices[-1] + 1}"
            run.report(run._step_progress(), f"{message}/{count} ...")
            action = run.poll()
            if action == "stop":
                stopped.add(key)
            elif action == "skip":
                outcome.skipped.update((key, index) for index in indices)

    lead.resources.placer.ensure(UNET)
    latents = lead._sample(
        models,
        schedule,
        sigmas,
        (positive, negative),
        x,
        items[0].seed,
        items[0].index,
        noise=noise,
        batch=len(items),
        callback=on_step,
    )
    for (run, item), latent in zip(chunk, latents, strict=True):
        outcome.latents[(id(run), item.index)] = latent[None]
    return outcome

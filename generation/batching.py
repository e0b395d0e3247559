"""Which queued tasks a worker may run beside the one it claimed (``FOOOCUS_BATCH_TASKS``).

Tasks join a batch when the engine gives their requests the same batch key
(:meth:`engine.pipeline.Engine.batch_key`: model, VAE, LoRAs, size, steps, sampler, scheduler,
guidance, refiner, FreeU). Tasks with image inputs or enhance never join: they are told apart
from their stored parameters, before any input file is read.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any

from generation.params import IMAGE_FIELDS, engine_request_from_params
from history import selectors, services
from history.models import Task, TaskKind

logger = logging.getLogger(__name__)

# How many of the oldest waiting tasks are looked through for companions, per companion wanted.
WINDOW_PER_TASK = 16


def images_to_make(task: Task) -> int:
    """Images still to make (a re-queued task keeps the images it already recorded)."""
    done = sum(1 for seed in task.seeds if seed != -1)
    return int(task.req_params.get("image_number", 1)) - done


def may_join(task: Task) -> bool:
    """A generate task without image inputs or enhance, with images still to make."""
    params = task.req_params
    if task.kind != TaskKind.GENERATE or params.get("enhance_checkbox"):
        return False
    if any(params.get(name) for name in IMAGE_FIELDS):
        return False
    if any(slot.get("cn_img") for slot in params.get("controlnet_image") or ()):
        return False
    return images_to_make(task) > 0


def batch_key_of(engine: Any, task: Task) -> Hashable | None:
    """The engine's batch key of ``task``'s request; None when it runs alone."""
    if not may_join(task):
        return None
    done = int(task.req_params.get("image_number", 1)) - images_to_make(task)
    try:
        request = engine_request_from_params(task.req_params, skip_images=done)
    except Exception:
        # A stored request the engine cannot read fails when it runs, alone.
        return None
    key: Hashable | None = engine.batch_key(request)
    return key


def claim_companions(engine: Any, lead: Task, worker: str, limit: int) -> list[Task]:
    """Claim up to ``limit`` waiting tasks (oldest first) that share ``lead``'s batch key."""
    if limit <= 0 or getattr(engine, "generate_many", None) is None:
        return []
    key = batch_key_of(engine, lead)
    if key is None:
        return []
    chosen: list[int] = []
    for task in selectors.pending_generate_tasks(limit=limit * WINDOW_PER_TASK):
        if batch_key_of(engine, task) == key:
            chosen.append(task.pk)
            if len(chosen) == limit:
                break
    return services.task_claim_these(worker=worker, pks=chosen)

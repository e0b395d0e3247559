"""Queueing a generate request: validate, store inputs, write the pending row, wake a worker."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.exceptions import ValidationError

from engine.types import EngineInputError
from generation import fields
from generation.access import ANONYMOUS, Caller, queued_task_limit
from generation.announce import task_queued, wake_workers
from generation.catalog import get_catalog
from generation.errors import RateLimited
from generation.params import build_req_params, engine_request_from_params, validate_generate
from history import services
from history.models import Task, TaskKind

# What a client refused for a full queue (its own or the server's) is told to wait.
RETRY_AFTER_SECONDS = 10


def submit_generate(
    data: Any,
    *,
    base_url: str,
    binary: bool,
    task_id: str | None = None,
    caller: Caller = ANONYMOUS,
    extra_params: dict[str, Any] | None = None,
) -> Task:
    """Validate ``data`` and queue it. Raises ``ValidationError`` (422) or ``QueueFullError``.

    Everything that can be wrong with a request is found before the row is written: field
    types and ranges, unknown models and styles, undecodable images, and features the engine
    does not support. Nothing is stored for a refused request except deduplicated input files.
    ``extra_params`` are kept in ``req_params`` as they are (the Fooocus-API routes mark their
    jobs with them).
    """
    catalog = get_catalog()
    validated = validate_generate(data, catalog=catalog, binary=binary)
    try:
        catalog.check(engine_request_from_params(validated.values, load_images=False))
    except EngineInputError as exc:
        # The engine names its request's fields; a 422 names the API's field the client sent.
        raise ValidationError({fields.api_name(exc.field): [exc.message]}) from exc
    params = build_req_params(validated)
    params.update(extra_params or {})
    return queue_task(params, base_url=base_url, task_id=task_id, caller=caller)


def queue_task(
    params: dict[str, Any],
    *,
    base_url: str,
    task_id: str | None = None,
    caller: Caller = ANONYMOUS,
    kind: str = TaskKind.GENERATE,
) -> Task:
    """Write the pending row for validated ``params`` and announce it once committed.

    Within the server's and the caller's queue limits: a full server queue raises
    ``QueueFullError``, the caller's own full queue raises ``RateLimited`` (429).
    """
    webhook_url = params.get("webhook_url") or settings.FOOOCUS_WEBHOOK_URL
    try:
        task = services.task_create(
            task_id=task_id,
            req_params=params,
            webhook_url=webhook_url,
            base_url=base_url,
            queue_limit=settings.FOOOCUS_QUEUE_SIZE,
            api_key=caller.key_id,
            key_queue_limit=queued_task_limit(caller),
            on_commit=lambda _task: wake_workers(),
            kind=kind,
        )
    except services.KeyQueueFullError as exc:
        raise RateLimited(str(exc), retry_after=RETRY_AFTER_SECONDS) from exc
    task_queued(task)
    return task

"""Queueing a tool request: validate, store the image by hash, write the pending row."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.exceptions import ValidationError

from generation.access import ANONYMOUS, Caller, queued_task_limit
from generation.announce import task_queued, wake_workers
from generation.errors import RateLimited
from generation.submit import RETRY_AFTER_SECONDS
from generation.tools.serializers import DescribeImageSerializer, GenerateMaskSerializer
from history import services
from history.files import input_image_store
from history.models import Task, TaskKind

SERIALIZERS = {TaskKind.DESCRIBE: DescribeImageSerializer, TaskKind.MASK: GenerateMaskSerializer}


def tool_params(kind: str, data: Any) -> dict[str, Any]:
    """The validated request as stored with the task (the image replaced by its stored URL).

    Raises ``ValidationError`` (422, every bad field) before anything is written.
    """
    if not isinstance(data, dict):
        raise ValidationError({"non_field_errors": ["the body must be a JSON object"]})
    serializer = SERIALIZERS[TaskKind(kind)](data=data)
    serializer.is_valid(raise_exception=True)
    values = dict(serializer.validated_data)
    values["image"] = f"/inputs/{input_image_store(values['image'])}"
    return {"task_kind": kind, **values}


def submit_tool(
    kind: str,
    data: Any,
    *,
    base_url: str,
    task_id: str | None = None,
    caller: Caller = ANONYMOUS,
    **_ignored: Any,
) -> Task:
    """Validate a describe-image or generate_mask request and queue it as a task of ``kind``."""
    params = tool_params(kind, data)
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

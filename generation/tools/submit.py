"""Queueing a tool request: validate, store the image by hash, write the pending row."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ValidationError

from generation.access import ANONYMOUS, Caller
from generation.submit import queue_task
from generation.tools.serializers import DescribeImageSerializer, GenerateMaskSerializer
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
    return queue_task(params, base_url=base_url, task_id=task_id, caller=caller, kind=kind)

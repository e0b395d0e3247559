"""Task rows as the worker leaves them, with real image files, made through the services."""

from __future__ import annotations

import io
from typing import Any

from django.utils import timezone
from PIL import Image

from history import services
from history.files import output_image_write
from history.models import Task, TaskStatus


def _png(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (256, 192), (40 * index % 255, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_task(
    status: str = TaskStatus.FINISHED,
    *,
    prompt: str = "a lighthouse",
    negative: str = "",
    performance: str = "Speed",
    model: str = "fooocus_demo_tiny.safetensors",
    images: int = 0,
    error: str = "",
) -> Task:
    """Queue a task, then move it to ``status`` with ``images`` real result files."""
    params: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative,
        "performance_selection": performance,
        "base_model_name": model,
        "aspect_ratios_selection": "64*64",
        "image_number": max(images, 1),
        "image_seed": 1234,
        "style_selections": [],
    }
    task = services.task_create(req_params=params, webhook_url="", base_url="", queue_limit=10_000)
    if status == TaskStatus.PENDING:
        return task
    now = timezone.now()
    result = [
        output_image_write(data=_png(index), extension="png", save_name=None, index=index)
        for index in range(images)
    ]
    fields: dict[str, Any] = {"status": status, "started_at": now, "worker": "test-worker"}
    if status != TaskStatus.RUNNING:
        fields.update(finished_at=now, result=result, seeds=[1234 + i for i in range(images)])
        fields.update(progress=100 if status == TaskStatus.FINISHED else 40, error=error)
    Task.objects.filter(pk=task.pk).update(**fields)
    task.refresh_from_db()
    return task

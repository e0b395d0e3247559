"""The task object of the API (API.md §3), built from a Task row and its live state."""

from __future__ import annotations

import base64
from typing import Any

from django.conf import settings

from generation.events import live_get
from generation.signing import signed_query
from history.files import resolve_output
from history.models import Task, TaskStatus

IMAGE_PARAM_FIELDS = (
    "uov_input_image",
    "inpaint_input_image",
    "inpaint_mask_image_upload",
    "enhance_input_image",
    "image",  # the tool tasks' input
)


def public_base(request_base: str) -> str:
    """Absolute URLs start with FOOOCUS_PUBLIC_URL when set, else the client's scheme and host."""
    return settings.FOOOCUS_PUBLIC_URL or request_base.rstrip("/")


def epoch_mills(moment: Any) -> int | None:
    """Epoch milliseconds, the API's time format (None stays None)."""
    return int(moment.timestamp() * 1000) if moment is not None else None


def output_url(base: str, relative: str) -> str:
    path = f"/outputs/{relative}"
    return f"{base}{path}{signed_query(path)}"


def input_url(base: str, path: str) -> str:
    """``path`` is the stored ``/inputs/<sha256>.png``."""
    return f"{base}{path}{signed_query(path)}"


def _absolute_params(params: dict[str, Any], base: str) -> dict[str, Any]:
    shown = dict(params)
    shown.pop("performance_lora_name", None)
    for key in IMAGE_PARAM_FIELDS:
        if shown.get(key):
            shown[key] = input_url(base, shown[key])
    if shown.get("controlnet_image"):
        shown["controlnet_image"] = [
            {**slot, "cn_img": input_url(base, slot["cn_img"]) if slot.get("cn_img") else ""}
            for slot in shown["controlnet_image"]
        ]
    return shown


def _base64_of(relative: str) -> str | None:
    day, _, name = relative.partition("/")
    path = resolve_output(day, name)
    return base64.b64encode(path.read_bytes()).decode("ascii") if path else None


def task_object(
    task: Task, *, base: str, with_live: bool = True, with_deliveries: bool = False
) -> dict[str, Any]:
    """The JSON task object. ``preview`` and live progress are added while it runs;
    ``with_deliveries`` adds the webhook attempts (one extra query, so only for single tasks)."""
    base = public_base(base)
    live = live_get(task.task_id) if with_live and task.status == TaskStatus.RUNNING else None
    progress = task.progress
    if live is not None:
        progress = max(progress, int(live.get("progress") or 0))
    body: dict[str, Any] = {
        "id": task.pk,
        "task_id": task.task_id,
        "req_params": _absolute_params(task.req_params, base),
        "in_queue_mills": epoch_mills(task.created_at),
        "start_mills": epoch_mills(task.started_at),
        "finish_mills": epoch_mills(task.finished_at),
        "task_status": task.status,
        "progress": progress,
        "preview": live.get("preview") if live else None,
        "message": live.get("message") if live else None,
        "webhook_url": task.webhook_url,
        "result": [output_url(base, relative) for relative in task.result],
        "seeds": list(task.seeds),
        "error": task.error or None,
    }
    if task.kind != "generate":
        body["task_kind"] = task.kind
        if task.kind == "describe":
            body["describe"] = task.text if task.status == TaskStatus.FINISHED else None
    if with_deliveries:
        body["webhook_deliveries"] = [
            {
                "attempt": delivery.attempt,
                "url": delivery.url,
                "at_mills": epoch_mills(delivery.attempted_at),
                "status_code": delivery.status_code,
                "ok": delivery.ok,
                "error": delivery.error or None,
            }
            for delivery in task.webhook_deliveries.all()
        ]
    if task.req_params.get("require_base64"):
        body["result_base64"] = [_base64_of(relative) for relative in task.result]
    return body

"""Fooocus-API's response shapes, built from Task rows (so any web process can answer them)."""

from __future__ import annotations

import base64
import io
import re
import uuid
from typing import Any

from PIL import Image

from generation.compat.fields import (
    IMAGE_PROMPT,
    INPAINT_OUTPAINT,
    TEXT_TO_IMAGE,
    UPSCALE_VARY,
)
from generation.events import live_get
from generation.presenters import epoch_mills, public_base
from generation.signing import signed_query
from history.files import resolve_output
from history.models import Task, TaskStatus

# The marker in req_params of a task queued through a Fooocus-API route.
MARKER = "fooocus_api"

SUCCESS, QUEUE_IS_FULL, USER_CANCEL, ERROR = "SUCCESS", "QUEUE_IS_FULL", "USER_CANCEL", "ERROR"
WAITING, RUNNING, STAGE_SUCCESS, STAGE_ERROR = "WAITING", "RUNNING", "SUCCESS", "ERROR"
NOT_FOUND = "Not Found"
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def job_id(task_id: str) -> str:
    """Fooocus-API's job ids are dashed UUIDs; ours are the same UUID's 32 hex digits."""
    try:
        return str(uuid.UUID(hex=task_id))
    except ValueError:
        return task_id


def task_id_of(job: str) -> str | None:
    """The task id a job id names (dashed or not), or None when it cannot name one."""
    text = job.strip().lower().replace("-", "")
    return text if _HEX32.match(text) else None


def file_url(base: str, relative: str) -> str:
    """Fooocus-API serves results under ``/files/<date>/<name>`` (the same files as /outputs)."""
    path = f"/files/{relative}"
    return f"{public_base(base)}{path}{signed_query(path)}"


def job_type(task: Task) -> str:
    """The job type recorded at submission; tasks from FooocusAPI's route get one by their
    inputs, so that query-job also answers for them."""
    marker = task.req_params.get(MARKER)
    if isinstance(marker, dict) and isinstance(marker.get("job_type"), str):
        return str(marker["job_type"])
    params = task.req_params
    if params.get("uov_method", "Disabled") != "Disabled" and params.get("uov_input_image"):
        return UPSCALE_VARY
    if params.get("inpaint_input_image"):
        return INPAINT_OUTPAINT
    if any(slot.get("cn_img") for slot in params.get("controlnet_image") or []):
        return IMAGE_PROMPT
    return TEXT_TO_IMAGE


def _data_url(relative: str) -> str | None:
    day, _, name = relative.partition("/")
    path = resolve_output(day, name)
    if path is None:
        return None
    kind = path.suffix.lstrip(".").lower().replace("jpg", "jpeg")
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def result_item(
    *, base64_data: str | None, url: str | None, seed: str, finish_reason: str
) -> dict[str, Any]:
    return {"base64": base64_data, "url": url, "seed": seed, "finish_reason": finish_reason}


def failure(reason: str) -> list[dict[str, Any]]:
    return [result_item(base64_data=None, url=None, seed="", finish_reason=reason)]


def image_results(task: Task, base: str) -> list[dict[str, Any]]:
    """One entry per result image (the seed each image had); a task without images says why."""
    with_base64 = bool(task.req_params.get("require_base64"))
    items = [
        result_item(
            base64_data=_data_url(relative) if with_base64 else None,
            url=file_url(base, relative),
            seed=str(task.seeds[index]) if index < len(task.seeds) else "",
            finish_reason=SUCCESS,
        )
        for index, relative in enumerate(task.result)
    ]
    if items:
        return items
    if task.status in (TaskStatus.STOP, TaskStatus.CANCELED):
        return failure(USER_CANCEL)
    return failure(ERROR)


def _png_base64(data_url: str | None) -> str | None:
    """Live previews are JPEG data URLs; Fooocus-API sends a bare base64 PNG."""
    if not data_url or "," not in data_url:
        return None
    raw = base64.b64decode(data_url.split(",", 1)[1])
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(raw)) as image:
        image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def async_job(task: Task, base: str, *, with_preview: bool = False) -> dict[str, Any]:
    """Fooocus-API's ``AsyncJobResponse`` for a task."""
    live = live_get(task.task_id) if task.status == TaskStatus.RUNNING else None
    progress = task.progress
    status: str | None
    result: list[dict[str, Any]] | None = None
    preview = None
    if task.status == TaskStatus.PENDING:
        stage, status = WAITING, "Waiting in queue"
    elif task.status == TaskStatus.RUNNING:
        stage = RUNNING
        status = (live or {}).get("message") or "Running"
        progress = max(progress, int((live or {}).get("progress") or 0))
        if with_preview:
            preview = _png_base64((live or {}).get("preview"))
    elif task.status == TaskStatus.FAILED:
        stage, status = STAGE_ERROR, task.error or "generation failed"
        result = failure(ERROR)
    elif task.status == TaskStatus.CANCELED:
        stage, status = STAGE_ERROR, "Canceled"
        result = failure(USER_CANCEL)
    else:  # finished, or stopped with or without images
        result = image_results(task, base)
        stage = STAGE_SUCCESS if task.result else STAGE_ERROR
        status = "Finished" if task.status == TaskStatus.FINISHED else "Stopped"
        progress = 100 if task.status == TaskStatus.FINISHED else progress
    return {
        "job_id": job_id(task.task_id),
        "job_type": job_type(task),
        "job_stage": stage,
        "job_progress": progress,
        "job_status": status,
        "job_step_preview": preview,
        "job_result": result,
    }


def not_found_job() -> dict[str, Any]:
    return {
        "job_id": "",
        "job_type": NOT_FOUND,
        "job_stage": STAGE_ERROR,
        "job_progress": 0,
        "job_status": "Job not found",
        "job_step_preview": None,
        "job_result": None,
    }


def history_item(task: Task) -> dict[str, Any]:
    """Fooocus-API's ``JobHistoryInfo``, with what it lacked to be useful."""
    return {
        "job_id": job_id(task.task_id),
        "job_type": job_type(task),
        "is_finished": task.is_ended,
        "in_queue_mills": epoch_mills(task.created_at),
        "start_mills": epoch_mills(task.started_at) or 0,
        "finish_mills": epoch_mills(task.finished_at) or 0,
        "job_status": task.status,
    }


def webhook_body(task: Task) -> dict[str, Any]:
    """Fooocus-API's webhook: ``{job_id, job_result: [{url, seed}]}`` (empty list on failure)."""
    return {
        "job_id": job_id(task.task_id),
        "job_result": [
            {
                "url": file_url(task.base_url, relative),
                "seed": str(task.seeds[index]) if index < len(task.seeds) else "-1",
            }
            for index, relative in enumerate(task.result)
        ],
    }


def is_compat_task(task: Task) -> bool:
    return isinstance(task.req_params.get(MARKER), dict)

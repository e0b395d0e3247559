"""What a client watches while a task runs: the live state in the cache, stop/skip requests,
and the shape of the events on the channel layer (:mod:`generation.announce` sends them).

The database stays the record of every task; these are only what a client watches while a task
runs. Losing a channel message loses nothing: waiting clients also re-read the database.
"""

from __future__ import annotations

import base64
import io
import uuid
from typing import TYPE_CHECKING, Any

from django.core.cache import cache
from PIL import Image

from history.models import TaskKind, TaskStatus

if TYPE_CHECKING:
    from history.models import Task

LIVE_TTL_SECONDS = 3600
CONTROL_TTL_SECONDS = 3600


def task_group(task_id: str) -> str:
    """The channel-layer group of one task (letters, digits and '.' only)."""
    return f"task.{task_id}"


def _live_key(task_id: str) -> str:
    return f"fooocus:live:{task_id}"


def _control_key(task_id: str) -> str:
    return f"fooocus:control:{task_id}"


def live_get(task_id: str) -> dict[str, Any] | None:
    """The latest progress/message/preview of a running task, from any web process."""
    value = cache.get(_live_key(task_id))
    return value if isinstance(value, dict) else None


def live_set(task_id: str, state: dict[str, Any]) -> None:
    cache.set(_live_key(task_id), state, LIVE_TTL_SECONDS)


def live_clear(task_id: str) -> None:
    cache.delete(_live_key(task_id))


def control_request(task_id: str, action: str) -> None:
    """Ask the worker running ``task_id`` to ``stop`` or ``skip`` (it polls between steps)."""
    cache.set(_control_key(task_id), action, CONTROL_TTL_SECONDS)


def control_take(task_id: str) -> str | None:
    """Read and consume a pending control request for ``task_id``."""
    key = _control_key(task_id)
    action = cache.get(key)
    if action is not None:
        cache.delete(key)
    return action if isinstance(action, str) else None


CLEAN_VRAM_KEY = "fooocus:clean_vram"


def clean_vram_request() -> str:
    """Ask every engine worker to unload its models when idle; returns the request's id."""
    request_id = uuid.uuid4().hex
    cache.set(CLEAN_VRAM_KEY, request_id, CONTROL_TTL_SECONDS)
    return request_id


def clean_vram_requested() -> str | None:
    """The id of the latest clean-VRAM request (each worker remembers which it has done)."""
    value = cache.get(CLEAN_VRAM_KEY)
    return value if isinstance(value, str) else None


def preview_data_url(image: Image.Image) -> str:
    """A small JPEG data URL: previews are sent often, so they are kept cheap."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def stream_event(
    *,
    task_id: str,
    status: str,
    progress: int,
    message: str,
    preview: str | None = None,
    images: list[str] | None = None,
    describe: str | None = None,
) -> dict[str, Any]:
    """The event shape clients of the stream receive (API.md §1.2); a describe-image task's
    end event also carries its text."""
    event = {
        "task_id": task_id,
        "task_status": status,
        "progress": progress,
        "preview": preview,
        "message": message,
        "images": images or [],
    }
    if describe is not None:
        event["describe"] = describe
    return event


# The message of a task's last event, by its status (a failure appends its error).
END_MESSAGES = {
    TaskStatus.FINISHED.value: "Finished",
    TaskStatus.STOP.value: "Stopped",
    TaskStatus.CANCELED.value: "Canceled",
    TaskStatus.FAILED.value: "Failed",
}


def end_event(task: Task) -> dict[str, Any]:
    """The last stream event of a task that ended, the same whoever ends it (the worker, a
    cancel, the sweep of a dead worker's task) and whoever tells it (a stream that missed it).
    ``images`` are the stored relative paths; a stream turns them into URLs."""
    message = END_MESSAGES.get(task.status, task.status)
    if task.status == TaskStatus.FAILED:
        message = f"{message}: {task.error}"
    return stream_event(
        task_id=task.task_id,
        status=task.status,
        progress=100 if task.status == TaskStatus.FINISHED else task.progress,
        message=message,
        images=list(task.result),
        describe=task.text if task.kind == TaskKind.DESCRIBE else None,
    )

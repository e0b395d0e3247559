"""Live task state: progress and previews in the cache, events on the channel layer.

The database stays the record of every task; these are only what a client watches while a task
runs. Losing a channel message loses nothing: waiting clients also re-read the database.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from collections.abc import Coroutine
from typing import Any

from channels.layers import BaseChannelLayer, get_channel_layer
from django.core.cache import cache
from PIL import Image

logger = logging.getLogger(__name__)

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


class EventPublisher:
    """Sends task events from the engine thread to the channel layer's event loop.

    The in-memory channel layer belongs to the server's event loop, so messages are scheduled on
    that loop instead of being sent from the worker thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, layer: BaseChannelLayer | None = None):
        self.loop = loop
        self.layer = layer or get_channel_layer()

    def _submit(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        if self.loop.is_closed():
            coroutine.close()
            return
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        future.add_done_callback(self._log_failure)

    @staticmethod
    def _log_failure(future: Any) -> None:
        if not future.cancelled() and future.exception() is not None:
            logger.warning("could not publish a task event: %r", future.exception())

    def publish(self, event: dict[str, Any], *, ended: bool = False) -> None:
        """Keep the live state for pollers and send the event to the task's group."""
        task_id = event["task_id"]
        if ended:
            live_clear(task_id)
        else:
            live_set(task_id, event)
        assert self.layer is not None
        self._submit(
            self.layer.group_send(task_group(task_id), {"type": "task.event", "event": event})
        )

    def send_to_channel(self, channel: str, message: dict[str, Any]) -> None:
        assert self.layer is not None
        self._submit(self.layer.send(channel, message))

"""Telling the world what happens to a task, from one place.

Each announcement does the same three things wherever it comes from (the web side queueing or
canceling, the worker running, the heartbeat failing a dead worker's task): it sends the stream
event to the task's channel-layer group, keeps the live state in the cache for pollers, and
sends the webhook. :func:`wake_workers` tells the engine workers that a task waits.

Sending depends on the thread:

- web code runs on threads that ``sync_to_async`` started, where ``async_to_sync`` runs the send
  on the server's event loop (:class:`LayerPublisher`, the default);
- the worker and its heartbeat run on threads of their own; the in-memory channel layer belongs
  to the server's loop, so their sends are scheduled on that loop (:class:`LoopPublisher`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from asgiref.sync import async_to_sync
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings

from generation.events import end_event, live_clear, live_set, stream_event, task_group
from generation.webhooks import WebhookSender, webhook_sender
from history.models import Task, TaskStatus

logger = logging.getLogger(__name__)

Message = dict[str, Any]


class Publisher(Protocol):
    """Sends channel-layer messages; never raises (a lost message costs one re-check)."""

    def group_send(self, group: str, message: Message) -> None: ...

    def send(self, channel: str, message: Message) -> None: ...


class LayerPublisher:
    """Sends from a thread started by ``sync_to_async`` (views, the consumers' blocking work)."""

    def __init__(self, layer: BaseChannelLayer | None = None) -> None:
        self._layer = layer

    @property
    def layer(self) -> BaseChannelLayer | None:
        return self._layer or get_channel_layer()

    def group_send(self, group: str, message: Message) -> None:
        self._call("group_send", group, message)

    def send(self, channel: str, message: Message) -> None:
        self._call("send", channel, message)

    def _call(self, method: str, target: str, message: Message) -> None:
        layer = self.layer
        if layer is None:
            return
        try:
            async_to_sync(getattr(layer, method))(target, message)
        except Exception:
            logger.warning("could not send %s to %s", message.get("type"), target, exc_info=True)


class LoopPublisher:
    """Sends from the worker's own threads by scheduling each send on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, layer: BaseChannelLayer) -> None:
        self.loop = loop
        self.layer = layer

    def group_send(self, group: str, message: Message) -> None:
        self._submit(self.layer.group_send(group, message))

    def send(self, channel: str, message: Message) -> None:
        self._submit(self.layer.send(channel, message))

    def _submit(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        if self.loop.is_closed():
            coroutine.close()
            return
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        future.add_done_callback(_log_failure)


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("could not publish a task event: %r", future.exception())


# The wake-up of each engine worker running in this process (serve, runworker).
_local_wakers: list[Callable[[], None]] = []
_local_lock = threading.Lock()


def local_worker_add(wake: Callable[[], None]) -> None:
    """Register a worker of this process, so wake-ups reach it without the channel layer."""
    with _local_lock:
        _local_wakers.append(wake)


def local_worker_remove(wake: Callable[[], None]) -> None:
    with _local_lock:
        if wake in _local_wakers:
            _local_wakers.remove(wake)


def wake_local_workers() -> None:
    with _local_lock:
        wakers = list(_local_wakers)
    for wake in wakers:
        wake()


class Announcer:
    """Announces the events of tasks through one publisher and one webhook sender."""

    def __init__(self, *, publisher: Publisher, webhooks: WebhookSender) -> None:
        self.publisher = publisher
        self.webhooks = webhooks

    def _publish(self, event: Message, *, ended: bool = False) -> None:
        task_id = event["task_id"]
        if ended:
            live_clear(task_id)
        else:
            live_set(task_id, event)
        self.publisher.group_send(task_group(task_id), {"type": "task.event", "event": event})

    def queued(self, task: Task) -> None:
        self.webhooks.send(task, "queued")

    def started(self, task: Task) -> None:
        self.webhooks.send(task, "started")
        self.progress(task, progress=1, message="Loading models ...", webhook=False)

    def progress(
        self,
        task: Task,
        *,
        progress: int,
        message: str,
        preview: str | None = None,
        webhook: bool = True,
    ) -> None:
        """A running task's progress; the ``progress`` webhook is throttled by the sender."""
        self._publish(
            stream_event(
                task_id=task.task_id,
                status=TaskStatus.RUNNING,
                progress=progress,
                message=message,
                preview=preview,
            )
        )
        if webhook:
            self.webhooks.send(task, "progress")

    def requeued(self, task: Task, reason: str) -> None:
        """A task went back to the queue (its worker is shutting down)."""
        self._publish(
            stream_event(
                task_id=task.task_id,
                status=TaskStatus.PENDING,
                progress=0,
                message=f"Back in the queue ({reason}) ...",
            )
        )

    def ended(self, task: Task) -> None:
        """The last event of a task that ended (finished, failed, stop or canceled)."""
        self._publish(end_event(task), ended=True)
        self.webhooks.send(task, task.status)

    def wake_workers(self) -> None:
        """Tell the engine workers that a task waits (best effort: they also poll)."""
        self.publisher.send(settings.FOOOCUS_WORKER_CHANNEL, {"type": "task.wake"})
        wake_local_workers()

    def close(self) -> None:
        """Stop retrying webhooks and wait briefly for deliveries in flight."""
        self.webhooks.shutdown()


@functools.cache
def web_announcer() -> Announcer:
    """This process's announcer for code on ``sync_to_async`` threads (views, consumers)."""
    return Announcer(publisher=LayerPublisher(), webhooks=webhook_sender())


def task_queued(task: Task) -> None:
    web_announcer().queued(task)


def task_ended(task: Task) -> None:
    web_announcer().ended(task)


def wake_workers() -> None:
    web_announcer().wake_workers()

"""Every consumer of the ASGI application (routed in :mod:`generation.routing`).

:class:`GenerateConsumer` answers ``POST /v1/engine/generate/`` in all four result modes.
:class:`EngineChannelConsumer` receives wake-ups on the engine workers' channel.

The generate mode depends on the body, so the whole endpoint is an ``AsyncHttpConsumer``: a
client waiting on a stream (or for its binary/JSON result) holds a coroutine, never a thread.
Each waiting request reads its task's events from a private channel subscribed to the task's
group, and re-reads the database every few seconds, because channel layers may drop messages.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from channels.consumer import AsyncConsumer
from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from django.conf import settings
from django.db import close_old_connections
from PIL import Image
from rest_framework import status
from rest_framework.exceptions import ValidationError

from generation.access import authenticate, check_rate, require_scope
from generation.announce import wake_local_workers
from generation.errors import (
    ApiError,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestInvalid,
    ServiceUnavailable,
    TaskFailed,
    error_parts,
)
from generation.events import end_event, stream_event, task_group
from generation.middleware import cors_headers
from generation.presenters import output_url, public_base, task_object
from generation.submit import RETRY_AFTER_SECONDS, submit_generate
from history.files import resolve_output
from history.models import ENDED_STATUSES, Task, TaskStatus
from history.selectors import task_get
from history.services import QueueFullError

logger = logging.getLogger(__name__)
T = TypeVar("T")

IMAGE_TYPES = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
KEEPALIVE_SECONDS = 15.0


def in_thread(func: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """Run blocking work (ORM, image decoding, downloads) off the event loop, in any thread."""

    def with_fresh_connections(*args: Any, **kwargs: Any) -> T:
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(
        functools.update_wrapper(with_fresh_connections, func), thread_sensitive=False
    )


def scope_headers(scope: dict[str, Any]) -> dict[str, str]:
    """The request's headers, names lower-cased (a repeated header keeps its last value)."""
    return {
        bytes(key).decode("latin-1").lower(): bytes(value).decode("latin-1")
        for key, value in scope.get("headers", [])
    }


def request_base(scope: dict[str, Any]) -> str:
    """``scheme://host[:port]`` as the client reached us."""
    host = scope_headers(scope).get("host")
    if not host:
        server = scope.get("server") or ("127.0.0.1", 7866)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}"


def image_format_from_accept(accept: str | None) -> str | None:
    """The image format a binary response should use, or None when the client wants JSON.

    No header, ``*/*`` and ``image/*`` accept an image in the task's own format ("").
    """
    if not accept:
        return ""
    wanted = [part.split(";")[0].strip().lower() for part in accept.split(",") if part.strip()]
    for media in wanted:
        if media in {"*/*", "image/*"}:
            return ""
        kind, _, subtype = media.partition("/")
        if kind == "image" and subtype in IMAGE_TYPES:
            return IMAGE_TYPES[subtype]
    return None


class GenerateConsumer(AsyncHttpConsumer):
    """Validates, queues, and answers in the mode the request chose (API.md §1.2)."""

    async def http_request(self, message: dict[str, Any]) -> None:
        # Refuse an oversized body as soon as it passes the limit, not after buffering it all.
        chunks: list[bytes] = self.body
        received = sum(len(chunk) for chunk in chunks) + len(message.get("body", b""))
        if received > settings.FOOOCUS_MAX_BODY_BYTES:
            chunks.clear()
            await self.send_error(
                PayloadTooLarge(f"request body larger than {settings.FOOOCUS_MAX_BODY_BYTES} bytes")
            )
            raise StopConsumer()
        await super().http_request(message)

    async def send_headers(self, *, status: int = status.HTTP_200_OK, headers: Any = None) -> None:
        extra = [(b"X-Content-Type-Options", b"nosniff"), (b"Referrer-Policy", b"same-origin")]
        origin = scope_headers(self.scope).get("origin")
        extra += [(k.encode(), v.encode()) for k, v in cors_headers(origin)]
        await super().send_headers(status=status, headers=[*(headers or []), *extra])

    async def send_json(
        self, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        await self.send_response(
            status,
            json.dumps(body).encode(),
            headers=[(b"Content-Type", b"application/json"), *(headers or [])],
        )

    async def send_error(self, exc: ApiError) -> None:
        """Answer ``exc`` as every API error is answered (:func:`generation.errors.error_parts`)."""
        code, body, headers = error_parts(exc)
        await self.send_json(code, body, [(k.encode(), v.encode()) for k, v in headers.items()])

    async def handle(self, body: bytes) -> None:
        try:
            await self._handle(body)
        except ApiError as exc:  # raised before any part of the answer went out
            await self.send_error(exc)

    async def _handle(self, body: bytes) -> None:
        if self.scope.get("method") == "OPTIONS":
            await self.send_response(status.HTTP_204_NO_CONTENT, b"")
            return
        if self.scope.get("method") != "POST":
            raise MethodNotAllowed(
                "Method not allowed; POST a JSON body", headers={"Allow": "POST"}
            )
        headers = scope_headers(self.scope)
        caller = await in_thread(authenticate)(headers)
        require_scope(caller, "generate")
        await in_thread(check_rate)(caller)
        if not body.strip():
            raise RequestInvalid(
                [
                    {
                        "loc": ["body"],
                        "msg": "the body must be a JSON object; it was empty",
                        "type": "missing",
                    }
                ]
            )
        try:
            data = self.parse_body(body, headers)
        except ValueError as exc:
            raise RequestInvalid(
                [{"loc": ["body"], "msg": str(exc), "type": "json_invalid"}]
            ) from exc
        image_format = image_format_from_accept(headers.get("accept"))
        wants_stream = isinstance(data, dict) and _flag(data.get("stream_output"))
        wants_async = isinstance(data, dict) and _flag(data.get("async_process"))
        binary = (
            self.binary_results
            and image_format is not None
            and not wants_stream
            and not wants_async
        )
        base = request_base(self.scope)
        task_id = uuid.uuid4().hex
        layer = self.channel_layer
        channel = None
        if (wants_stream or not wants_async) and layer is not None:
            # Subscribe before the task exists, so not even its first event can be missed.
            # A stream needs every event even when async_process is set too (streaming wins).
            channel = await layer.new_channel()
            await layer.group_add(task_group(task_id), channel)
        try:
            task = await self._submit(
                data, base_url=base, binary=binary, task_id=task_id, caller=caller
            )
            task_header = [(b"X-Task-Id", task.task_id.encode())]
            if wants_stream or task.req_params.get("stream_output"):
                await self._stream(task, channel, base, task_header)
            elif wants_async or task.req_params.get("async_process"):
                await self.send_json(status.HTTP_200_OK, task_object(task, base=base), task_header)
            else:
                task = await self._wait_until_ended(task, channel)
                if binary:
                    await self._send_binary(task, image_format or "", base, task_header)
                else:
                    await self.send_result(task, base, task_header)
        finally:
            if channel is not None and layer is not None:
                await layer.group_discard(task_group(task_id), channel)

    async def _submit(self, data: Any, **options: Any) -> Task:
        """Queue the request; every refusal is an :class:`ApiError`."""
        try:
            return await in_thread(self.submit)(data, **options)
        except ApiError:
            raise
        except ValidationError as exc:
            raise RequestInvalid.from_drf(exc.detail) from exc
        except QueueFullError as exc:
            raise ServiceUnavailable(str(exc), retry_after=RETRY_AFTER_SECONDS) from exc
        except Exception as exc:
            # Nothing was queued (the row is written last, in one transaction): say so in the
            # API's error shape and keep the traceback in the log.
            logger.exception("could not queue a generate request")
            raise ApiError("internal error while queueing the request; nothing was queued") from exc

    # What subclasses (the tool routes) change ----------------------------------------------
    binary_results = True
    """Whether an image ``Accept`` header asks for the image itself."""

    def parse_body(self, body: bytes, headers: dict[str, str]) -> Any:
        """The request data; ValueError (a 422) when the body cannot be read."""
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"invalid JSON: {exc}") from exc

    def submit(self, data: Any, **kwargs: Any) -> Task:
        """Validate and queue (in a worker thread)."""
        return submit_generate(data, **kwargs)

    async def send_result(self, task: Task, base: str, headers: list[tuple[bytes, bytes]]) -> None:
        """The synchronous answer once the task ended: the task object."""
        await self.send_json(
            status.HTTP_200_OK, await in_thread(task_object)(task, base=base), headers
        )

    # Waiting ------------------------------------------------------------------------------
    async def _events(self, task: Task, channel: str | None) -> Any:
        """Yield task events until the task ends; yields None on each quiet interval."""
        recheck = settings.FOOOCUS_WAIT_RECHECK_SECONDS
        while True:
            if channel is None:
                await asyncio.sleep(recheck)
                message = None
            else:
                try:
                    message = await asyncio.wait_for(self.channel_layer.receive(channel), recheck)
                except TimeoutError:
                    message = None
            if message is not None and message.get("type") == "task.event":
                yield message["event"]
                if message["event"]["task_status"] in ENDED_STATUSES:
                    return
                continue
            current = await in_thread(task_get)(task_id=task.task_id)
            if current is None or current.status in ENDED_STATUSES:
                return
            yield None

    async def _wait_until_ended(self, task: Task, channel: str | None) -> Task:
        async for _event in self._events(task, channel):
            pass
        ended = await in_thread(task_get)(task_id=task.task_id)
        return ended or task

    async def _stream(
        self, task: Task, channel: str | None, base: str, extra: list[tuple[bytes, bytes]]
    ) -> None:
        await self.send_headers(
            status=status.HTTP_200_OK,
            headers=[
                (b"Content-Type", b"text/event-stream"),
                (b"Cache-Control", b"no-cache"),
                (b"X-Accel-Buffering", b"no"),
                *extra,
            ],
        )
        first = stream_event(
            task_id=task.task_id, status=task.status, progress=0, message="Waiting in queue ..."
        )
        await self.send_body(_sse(first), more_body=True)
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        ended = False
        async for event in self._events(task, channel):
            if event is None:
                if loop.time() - last_sent >= KEEPALIVE_SECONDS:
                    await self.send_body(b": keep-alive\n\n", more_body=True)
                    last_sent = loop.time()
                continue
            if event["task_status"] in ENDED_STATUSES:
                ended = True
                event = _with_urls(event, base)
            await self.send_body(_sse(event), more_body=True)
            last_sent = loop.time()
        if not ended:
            # The end event was lost (or the task ended before we listened): tell it from the row.
            current = await in_thread(task_get)(task_id=task.task_id)
            if current is not None:
                await self.send_body(_sse(_with_urls(end_event(current), base)), more_body=True)
        await self.send_body(b"", more_body=False)

    async def _send_binary(
        self, task: Task, image_format: str, base: str, extra: list[tuple[bytes, bytes]]
    ) -> None:
        task_header = {"X-Task-Id": task.task_id}
        if task.status == TaskStatus.FAILED:
            raise TaskFailed(
                task.error or "generation failed", task_id=task.task_id, headers=task_header
            )
        if not task.result:
            await self.send_response(status.HTTP_204_NO_CONTENT, b"", headers=extra)
            return
        day, _, name = task.result[0].partition("/")
        path = resolve_output(day, name)
        if path is None:
            raise TaskFailed(
                "the result file is missing", task_id=task.task_id, headers=task_header
            )
        stored_format = path.suffix.lstrip(".").lower()
        wanted = image_format or stored_format
        data = await in_thread(_image_bytes)(str(path), stored_format, wanted)
        await self.send_response(
            status.HTTP_200_OK,
            data,
            headers=[(b"Content-Type", f"image/{wanted}".encode()), *extra],
        )


def _image_bytes(path: str, stored_format: str, wanted: str) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read()
    if stored_format == wanted:
        return data
    with Image.open(io.BytesIO(data)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=wanted.upper())
        return buffer.getvalue()


def _flag(value: Any) -> bool:
    """Booleans as DRF reads them (true, "true", 1, "1", ...)."""
    return value is True or str(value).strip().lower() in {"true", "1", "yes", "on"}


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def _with_urls(event: dict[str, Any], base: str) -> dict[str, Any]:
    """An end event as a stream sends it: its stored image paths as URLs."""
    return {**event, "images": [output_url(public_base(base), r) for r in event["images"]]}


class EngineChannelConsumer(AsyncConsumer):
    """Receives ``task.wake`` messages on the engine channel and pokes this process's workers."""

    async def task_wake(self, message: dict[str, Any]) -> None:
        wake_local_workers()

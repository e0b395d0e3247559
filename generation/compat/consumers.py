"""``POST /v1/generation/*`` and ``/v2/generation/*``: Fooocus-API's generation routes.

Each request is translated to FooocusAPI's generate body and queued by the same code as
``POST /v1/engine/generate/``; waiting for the result uses the same consumer machinery (the
task's channel group plus database re-reads), so it holds a coroutine, never a thread.

Result modes, as Fooocus-API has them: ``async_process`` -> the job object at once;
``Accept: image/png`` (or ``?accept=image/png``) -> the first image's bytes; otherwise the list
of ``{base64, url, seed, finish_reason}`` once the job ended.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from typing import Any
from urllib.parse import parse_qs

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.core.handlers.asgi import ASGIRequest
from django.http.multipartparser import MultiPartParserError
from rest_framework.exceptions import ValidationError

from generation.access import authenticate, check_rate, require_scope
from generation.compat import presenters
from generation.compat.fields import ROUTES, Route
from generation.compat.translate import FeatureNotImplemented, Translated, form_data, translate
from generation.consumers import (
    IMAGE_TYPES,
    GenerateConsumer,
    _image_bytes,
    in_thread,
    request_base,
    scope_headers,
)
from generation.errors import ApiError, validation_error_body
from generation.events import task_group
from generation.submit import RETRY_AFTER_SECONDS, submit_generate
from history.files import resolve_output
from history.models import Task, TaskStatus
from history.services import QueueFullError

logger = logging.getLogger(__name__)

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def binary_format(accept: str | None) -> str | None:
    """The image type a binary answer should have, or None for JSON. Unlike FooocusAPI's
    route, no header or ``*/*`` means JSON here: that is Fooocus-API's default."""
    for part in (accept or "").split(","):
        kind, _, subtype = part.split(";")[0].strip().lower().partition("/")
        if kind == "image" and subtype in IMAGE_TYPES:
            return IMAGE_TYPES[subtype]
    return None


class RequestError(Exception):
    """A body that could not be read at all (answered 422 with Fooocus-API's ``body``)."""

    def __init__(self, message: str, shown: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.shown = shown


def read_request(route: Route, scope: dict[str, Any], body: bytes) -> tuple[dict[str, Any], Any]:
    """The request as a Fooocus-API JSON body, and the body to echo in a 422 (blocking)."""
    content_type = scope_headers(scope).get("content-type", "").split(";")[0].strip().lower()
    if route.form:
        if content_type not in FORM_TYPES:
            raise RequestError(f"{route.path} takes a multipart/form-data body (with its files)")
        request = ASGIRequest(scope, io.BytesIO(body))
        try:
            return form_data(request.POST, request.FILES)
        except (MultiPartParserError, RequestDataTooBig, TooManyFieldsSent) as exc:
            raise RequestError(f"unreadable form: {exc}") from exc
        except SuspiciousOperation as exc:
            raise RequestError(f"refused form: {exc}") from exc
    if not body.strip():
        raise RequestError("the body must be a JSON object; it was empty")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RequestError("the body must be a JSON object", data)
    return data, data


def compat_422(errors: Any, translated: Translated | None, shown: Any) -> dict[str, Any]:
    """Fooocus-API's 422: FastAPI's ``detail`` items (named as the client named the fields)
    plus ``body``, the request as received."""
    detail = validation_error_body(errors)["detail"]
    if translated is not None:
        for item in detail:
            item["loc"] = translated.relocate(item["loc"])
    return {"detail": detail, "body": shown}


class FooocusApiGenerateConsumer(GenerateConsumer):
    """One of Fooocus-API's generation routes (the route is in the URL)."""

    async def handle(self, body: bytes) -> None:
        if self.scope.get("method") == "OPTIONS":
            await self.send_response(204, b"")
            return
        if self.scope.get("method") != "POST":
            await self.send_json(405, {"detail": "Method Not Allowed"}, [(b"Allow", b"POST")])
            return
        kwargs = self.scope.get("url_route", {}).get("kwargs", {})
        route = ROUTES.get((int(kwargs.get("version", 0)), str(kwargs.get("name", ""))))
        if route is None:
            await self.send_json(404, {"detail": "Not Found"})
            return
        headers = scope_headers(self.scope)
        try:
            caller = await in_thread(authenticate)(headers)
            require_scope(caller, "generate")
            await in_thread(check_rate)(caller)
        except ApiError as exc:  # 401/403/429 in the API's one error shape
            await self.send_error(exc)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        accept = (query.get("accept") or [""])[-1] or headers.get("accept")
        image_format = binary_format(accept)

        translated: Translated | None = None
        shown: Any = None
        try:
            data, shown = await in_thread(read_request)(route, self.scope, body)
            translated = translate(route, data, from_form=route.form)
        except RequestError as exc:
            item = {"loc": ["body"], "msg": exc.message, "type": "value_error"}
            await self.send_json(422, {"detail": [item], "body": exc.shown})
            return
        except ValidationError as exc:
            await self.send_json(422, compat_422(exc.detail, translated, shown))
            return
        except FeatureNotImplemented as exc:
            await self.send_json(501, {"detail": str(exc), "feature": exc.feature})
            return

        wants_async = _flag(translated.body.get("async_process"))
        binary = image_format is not None and not wants_async
        task_id = uuid.uuid4().hex
        layer = self.channel_layer
        channel = None
        if not wants_async and layer is not None:
            channel = await layer.new_channel()
            await layer.group_add(task_group(task_id), channel)
        try:
            try:
                task = await in_thread(submit_generate)(
                    translated.body,
                    base_url=request_base(self.scope),
                    binary=binary,
                    task_id=task_id,
                    caller=caller,
                    extra_params={
                        presenters.MARKER: {"route": route.path, "job_type": route.job_type}
                    },
                )
            except ValidationError as exc:
                await self.send_json(422, compat_422(exc.detail, translated, shown))
                return
            except ApiError as exc:  # the caller's queued-task limit (429)
                await self.send_error(exc)
                return
            except QueueFullError:
                await self._send_queue_full(route, binary, wants_async)
                return
            except Exception:
                logger.exception("could not queue a Fooocus-API request")
                await self.send_json(
                    500, {"detail": "internal error while queueing the request; nothing was queued"}
                )
                return
            await self._answer(task, channel, wants_async, binary, image_format or "png")
        finally:
            if channel is not None and layer is not None:
                await layer.group_discard(task_group(task_id), channel)

    async def _answer(
        self, task: Task, channel: str | None, wants_async: bool, binary: bool, image_format: str
    ) -> None:
        base = request_base(self.scope)
        extra = [(b"X-Task-Id", task.task_id.encode())]
        if wants_async:
            await self.send_json(200, await in_thread(presenters.async_job)(task, base), extra)
            return
        task = await self._wait_until_ended(task, channel)
        if binary:
            await self._send_image(task, image_format, extra)
            return
        await self.send_json(200, await in_thread(presenters.image_results)(task, base), extra)

    async def _send_image(
        self, task: Task, image_format: str, extra: list[tuple[bytes, bytes]]
    ) -> None:
        """Fooocus-API's binary answer: the image, or 400 USER_CANCEL / 500 ERROR."""
        path = None
        if task.result:
            day, _, name = task.result[0].partition("/")
            path = resolve_output(day, name)
        if path is None:
            cancelled = task.status in (TaskStatus.STOP, TaskStatus.CANCELED)
            status, reason = (400, presenters.USER_CANCEL) if cancelled else (500, presenters.ERROR)
            await self.send_response(
                status, reason.encode(), headers=[(b"Content-Type", b"text/plain"), *extra]
            )
            return
        stored = path.suffix.lstrip(".").lower().replace("jpg", "jpeg")
        data = await in_thread(_image_bytes)(str(path), stored, image_format)
        await self.send_response(
            200, data, headers=[(b"Content-Type", f"image/{image_format}".encode()), *extra]
        )

    async def _send_queue_full(self, route: Route, binary: bool, wants_async: bool) -> None:
        retry = [(b"Retry-After", str(RETRY_AFTER_SECONDS).encode())]
        if binary:
            await self.send_response(
                409,
                presenters.QUEUE_IS_FULL.encode(),
                headers=[(b"Content-Type", b"text/plain"), *retry],
            )
        elif wants_async:
            body = {
                "job_id": "",
                "job_type": route.job_type,
                "job_stage": presenters.STAGE_ERROR,
                "job_progress": 0,
                "job_status": None,
                "job_step_preview": None,
                "job_result": presenters.failure(presenters.QUEUE_IS_FULL),
            }
            await self.send_json(409, body, retry)
        else:
            await self.send_json(409, presenters.failure(presenters.QUEUE_IS_FULL), retry)


def _flag(value: Any) -> bool:
    return value is True or str(value).strip().lower() in {"true", "1", "yes", "on"}

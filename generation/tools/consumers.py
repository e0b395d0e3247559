"""The tool routes' consumers: the generate consumer's queueing, waiting and streaming, with
the tools' request forms and FooocusAPI's synchronous answers."""

from __future__ import annotations

import base64
import io
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings
from django.core.files.uploadhandler import MemoryFileUploadHandler, TemporaryFileUploadHandler
from django.http.multipartparser import MultiPartParser, MultiPartParserError

from generation.consumers import GenerateConsumer, in_thread
from generation.presenters import _base64_of
from generation.tools.submit import submit_tool
from history.models import Task, TaskKind, TaskStatus


class ToolConsumer(GenerateConsumer):
    """One tool route; ``kind`` says which."""

    kind: str = TaskKind.DESCRIBE
    binary_results = False

    def parse_body(self, body: bytes, headers: dict[str, str]) -> Any:
        """JSON, or (Fooocus-API's describe-image) a multipart form with an ``image`` file;
        query parameters (``?image_type=Anime``) fill fields the body does not set."""
        content_type = headers.get("content-type", "")
        if content_type.lower().startswith("multipart/form-data"):
            data: Any = _form_data(body, content_type)
        else:
            data = super().parse_body(body, headers)
        if isinstance(data, dict):
            query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
            for key, values in query.items():
                data.setdefault(key, values[-1])
        return data

    def submit(self, data: Any, **kwargs: Any) -> Task:
        return submit_tool(self.kind, data, **kwargs)

    async def send_result(self, task: Task, base: str, headers: list[tuple[bytes, bytes]]) -> None:
        if task.status == TaskStatus.FAILED:
            body = {"detail": task.error or "the tool failed", "task_id": task.task_id}
            await self.send_json(500, body, headers)
            return
        if task.status != TaskStatus.FINISHED:
            body = {"detail": f"the task ended {task.status}", "task_id": task.task_id}
            await self.send_json(409, body, headers)
            return
        if self.kind == TaskKind.DESCRIBE:
            await self.send_json(200, {"describe": task.text}, headers)
            return
        mask = await in_thread(_base64_of)(task.result[0]) if task.result else None
        if mask is None:
            body = {"detail": "the mask file is missing", "task_id": task.task_id}
            await self.send_json(500, body, headers)
            return
        await self.send_json(200, mask, headers)  # a JSON string, as FooocusAPI answers


class DescribeImageConsumer(ToolConsumer):
    """``POST /v1/tools/describe-image``."""

    kind = TaskKind.DESCRIBE


class GenerateMaskConsumer(ToolConsumer):
    """``POST /v1/tools/generate_mask``."""

    kind = TaskKind.MASK


def _form_data(body: bytes, content_type: str) -> dict[str, Any]:
    meta = {"CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body))}
    handlers = [MemoryFileUploadHandler(), TemporaryFileUploadHandler()]
    try:
        fields, files = MultiPartParser(meta, io.BytesIO(body), handlers, "utf-8").parse()
    except MultiPartParserError as exc:
        raise ValueError(f"invalid multipart form: {exc}") from exc
    data: dict[str, Any] = {key: fields.get(key) for key in fields}
    upload = files.get("image")
    if upload is not None:
        if upload.size > settings.FOOOCUS_MAX_IMAGE_BYTES:
            raise ValueError(f"image is larger than {settings.FOOOCUS_MAX_IMAGE_BYTES} bytes")
        data["image"] = base64.b64encode(upload.read()).decode("ascii")
    return data

"""The API's plain request/response views (the generate endpoint is a consumer)."""

from __future__ import annotations

import io
import mimetypes
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from PIL import Image
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from engine import options
from generation.access import Caller
from generation.catalog import get_catalog
from generation.control import task_cancel_and_notify
from generation.errors import Forbidden, NotFound, RequestInvalid
from generation.events import control_request
from generation.presenters import task_object
from generation.schema import (
    COMMON_ERRORS,
    CancelResultSerializer,
    DeleteResultSerializer,
    DetailSerializer,
    TaskListsSerializer,
    TaskObjectSerializer,
    ValidationErrorSerializer,
)
from generation.serializers import TaskQuerySerializer
from generation.signing import signature_valid
from history import selectors, services
from history.files import resolve_input, resolve_output


def request_base(request: Request | HttpRequest) -> str:
    """The scheme and host the client reached us at (file and task URLs are built on it)."""
    return f"{request.scheme}://{request.get_host()}"


def caller_scope(request: Request) -> str | None:
    """Which tasks the caller may see: None = all (admin), else its own key's."""
    caller = request.user
    if isinstance(caller, Caller) and caller.is_admin:
        return None
    return caller.key_id if isinstance(caller, Caller) else ""


def query_error(serializer: serializers.Serializer) -> ValidationError:
    """A 422 for a bad query string (its errors located in the query, not the body)."""
    error = ValidationError(serializer.errors)
    error.location = "query"  # type: ignore[attr-defined]
    return error


class TaskListView(APIView):
    """``GET /tasks``: history, current and pending lists; ``action=delete`` deletes a range."""

    required_scope = "read"

    @extend_schema(
        operation_id="tasks_list",
        parameters=[TaskQuerySerializer],
        responses={
            200: OpenApiResponse(TaskListsSerializer, "the lists (or, with action=delete, counts)"),
            422: ValidationErrorSerializer,
            **COMMON_ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        serializer = TaskQuerySerializer(data=request.query_params)
        if not serializer.is_valid():
            raise query_error(serializer)
        query: dict[str, Any] = serializer.validated_data
        if query["action"] == "delete":
            self._require_admin(request)
            return self._delete(query)
        base = request_base(request)
        body: dict[str, list[dict[str, Any]]] = {"history": [], "current": [], "pending": []}
        window: dict[str, Any] = {
            "page": query["page"],
            "page_size": query["page_size"],
            "start": query.get("start_at"),
            "end": query.get("end_at"),
            "api_key": caller_scope(request),
        }
        if query["query"] in ("all", "history"):
            body["history"] = [
                task_object(t, base=base) for t in selectors.task_list_history(**window)
            ]
        if query["query"] in ("all", "current"):
            body["current"] = [
                task_object(t, base=base)
                for t in selectors.task_list_running(api_key=caller_scope(request))
            ]
        if query["query"] in ("all", "pending"):
            body["pending"] = [
                task_object(t, base=base) for t in selectors.task_list_pending(**window)
            ]
        return Response(body)

    @extend_schema(
        operation_id="tasks_delete_range",
        parameters=[TaskQuerySerializer],
        responses={200: DeleteResultSerializer, 422: ValidationErrorSerializer, **COMMON_ERRORS},
    )
    def delete(self, request: Request) -> Response:
        self._require_admin(request)
        serializer = TaskQuerySerializer(data={**request.query_params.dict(), "action": "delete"})
        if not serializer.is_valid():
            raise query_error(serializer)
        return self._delete(serializer.validated_data)

    @staticmethod
    def _require_admin(request: Request) -> None:
        caller = request.user
        if not isinstance(caller, Caller) or not caller.is_admin:
            raise Forbidden("deleting history needs an API key with the 'admin' scope")

    @staticmethod
    def _delete(query: dict[str, Any]) -> Response:
        outcome = services.task_delete_range(start=query["start_at"], end=query["end_at"])
        return Response({"deleted": outcome.deleted, "files_deleted": outcome.files_deleted})


class TaskDetailView(APIView):
    """``GET /tasks/{task_id}``: one task object, 404 when unknown."""

    required_scope = "read"

    @extend_schema(responses={200: TaskObjectSerializer, 404: DetailSerializer, **COMMON_ERRORS})
    def get(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get(task_id=task_id, api_key=caller_scope(request))
        if task is None:
            raise NotFound(f"no task {task_id}")
        return Response(task_object(task, base=request_base(request), with_deliveries=True))


class TaskCancelView(APIView):
    """``POST /tasks/{task_id}/cancel``: a waiting task never runs; a running one stops."""

    required_scope = "generate"

    @extend_schema(
        request=None,
        responses={200: CancelResultSerializer, 404: DetailSerializer, **COMMON_ERRORS},
    )
    def post(self, request: Request, task_id: str) -> Response:
        if selectors.task_get(task_id=task_id, api_key=caller_scope(request)) is None:
            raise NotFound(f"no task {task_id}")
        outcome = task_cancel_and_notify(task_id=task_id)
        if outcome is None:
            raise NotFound(f"no task {task_id}")
        task = selectors.task_get(task_id=task_id) or outcome.task
        return Response(
            {"action": outcome.action, "task": task_object(task, base=request_base(request))}
        )


class EngineControlView(APIView):
    """``POST /v1/engine/control?action=stop|skip``: FooocusAPI's control of the running task.

    It acts on whatever runs, whoever submitted it, so it needs the ``admin`` scope."""

    required_scope = "admin"

    @extend_schema(
        request=None,
        parameters=[
            OpenApiParameter("action", str, enum=["stop", "skip"], required=True),
        ],
        responses={
            200: inline_serializer(
                "ControlResult",
                {
                    "action": serializers.CharField(),
                    "message": serializers.CharField(),
                    "task_ids": serializers.ListField(child=serializers.CharField()),
                },
            ),
            422: ValidationErrorSerializer,
            **COMMON_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        data = request.data if isinstance(request.data, dict) else {}
        action = request.query_params.get("action") or data.get("action", "")
        if action not in ("stop", "skip"):
            raise RequestInvalid.from_drf({"action": ["must be 'stop' or 'skip'"]}, "query")
        running = selectors.task_list_running()
        for task in running:
            control_request(task.task_id, action)
        return Response(
            {
                "action": action,
                "message": f"task {action} requested" if running else "no task is running",
                "task_ids": [task.task_id for task in running],
            }
        )


class AllModelsView(APIView):
    required_scope = "any"

    @extend_schema(
        responses={
            200: inline_serializer(
                "AllModels",
                {
                    name: serializers.ListField(child=serializers.CharField())
                    for name in (
                        "model_filenames",
                        "lora_filenames",
                        "vae_filenames",
                        "downloadable_model_filenames",
                        "downloadable_lora_filenames",
                    )
                },
            ),
            **COMMON_ERRORS,
        }
    )
    def get(self, request: Request) -> Response:
        catalog = get_catalog()
        return Response(
            {
                "model_filenames": catalog.list_files("checkpoints"),
                "lora_filenames": catalog.list_files("loras"),
                "vae_filenames": catalog.list_files("vae"),
                "downloadable_model_filenames": catalog.downloadable("checkpoints"),
                "downloadable_lora_filenames": catalog.downloadable("loras"),
            }
        )


class StylesView(APIView):
    required_scope = "any"

    @extend_schema(responses={200: serializers.ListSerializer(child=serializers.CharField())})
    def get(self, request: Request) -> Response:
        return Response(get_catalog().styles())


class PresetsView(APIView):
    required_scope = "any"

    @extend_schema(
        responses={
            200: inline_serializer(
                "Presets",
                {
                    "default": serializers.CharField(),
                    "presets": serializers.ListField(child=serializers.CharField()),
                },
            )
        }
    )
    def get(self, request: Request) -> Response:
        return Response({"default": settings.FOOOCUS_PRESET, "presets": get_catalog().presets()})


class OptionsView(APIView):
    """The allowed values of every enumerated request field."""

    required_scope = "any"

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        catalog = get_catalog()
        preset = catalog.preset("initial")
        return Response(
            {
                "performances": list(options.PERFORMANCES),
                "aspect_ratios": list(preset.aspect_ratios or options.SDXL_ASPECT_RATIOS),
                "samplers": list(options.SAMPLERS),
                "schedulers": list(options.SCHEDULERS),
                "uov_methods": list(options.UOV_METHODS),
                "outpaint_directions": list(options.OUTPAINT_DIRECTIONS),
                "cn_types": list(options.CN_TYPES),
                "cn_type_defaults": {
                    name: {"cn_stop": stop, "cn_weight": weight}
                    for name, (stop, weight) in options.CN_TYPE_DEFAULTS.items()
                },
                "output_formats": list(options.OUTPUT_FORMATS),
                "inpaint_engines": list(options.INPAINT_ENGINES),
                "refiner_swap_methods": list(options.REFINER_SWAP_METHODS),
                "metadata_schemes": list(options.METADATA_SCHEMES),
                "vaes": [options.DEFAULT_VAE, *catalog.list_files("vae")],
            }
        )


def ping(request: HttpRequest) -> HttpResponse:
    return HttpResponse("pong", content_type="text/plain")


# What ``Accept: image/<x>`` converts a served image to (FooocusAPI's /outputs and /inputs).
CONVERTIBLE = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}


def requested_image_type(request: HttpRequest) -> str | None:
    """The format a file route should convert to: ``?accept=`` (Fooocus-API's override) or an
    ``Accept`` header naming exactly one of png, jpeg/jpg, webp. A browser's list
    (``image/avif,image/webp,*/*``) asks for nothing in particular: the stored file is sent."""
    wanted = (request.GET.get("accept") or request.headers.get("Accept") or "").strip().lower()
    kind, _, subtype = wanted.split(";")[0].strip().partition("/")
    if "," in wanted or kind != "image" or subtype not in CONVERTIBLE:
        return None
    return "jpeg" if subtype == "jpg" else subtype


def _converted(path: Any, wanted: str) -> bytes:
    buffer = io.BytesIO()
    with Image.open(path) as opened:
        opened.load()
        image: Image.Image = opened
        if wanted == "jpeg" and image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        image.save(buffer, format=CONVERTIBLE[wanted])
    return buffer.getvalue()


def file_response(request: HttpRequest, path: Any) -> HttpResponse | FileResponse:
    """Serve a stored image, converted when the client asks for another image type."""
    if path is None:
        raise Http404("no such file")
    wanted = requested_image_type(request)
    stored = path.suffix.lstrip(".").lower().replace("jpg", "jpeg")
    response: HttpResponse | FileResponse
    if wanted is not None and wanted != stored:
        try:
            data = _converted(path, wanted)
        except (OSError, ValueError) as exc:
            raise Http404(f"{path.name} could not be read as an image") from exc
        response = HttpResponse(data, content_type=f"image/{wanted}")
    else:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        response = FileResponse(path.open("rb"), content_type=content_type)
    response["Cache-Control"] = "public, max-age=86400, immutable"
    response["Vary"] = "Accept"
    return response


def _check_signature(request: HttpRequest) -> None:
    if not signature_valid(request.path, request.GET.get("exp"), request.GET.get("sig")):
        raise DjangoPermissionDenied("this file URL is unsigned, wrongly signed or expired")


def output_file(request: HttpRequest, day: str, name: str) -> HttpResponse | FileResponse:
    """``GET /outputs/<day>/<name>``: anything leaving the outputs folder is a 404."""
    _check_signature(request)
    return file_response(request, resolve_output(day, name))


def input_file(request: HttpRequest, name: str) -> HttpResponse | FileResponse:
    """``GET /inputs/<name>``."""
    _check_signature(request)
    return file_response(request, resolve_input(name))


def example_page(request: HttpRequest) -> FileResponse:
    """The bundled progress page (self-contained, works offline)."""
    path = settings.BASE_DIR / "static" / "example.html"
    return FileResponse(path.open("rb"), content_type="text/html; charset=utf-8")

"""The OpenAPI description of the API, generated from the serializers (drf-spectacular).

The generate endpoint is served by an ASGI consumer (so streams hold no thread); this module's
view only describes it for the schema. Response shapes that are not serializers elsewhere are
written down here as serializers too, so the document and the code share one source.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from generation.serializers import GenerateRequestSerializer


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents both ways to present a key: ``X-API-KEY`` and ``Authorization: Bearer``."""

    target_class = "generation.auth.ApiKeyAuthentication"
    name = ["ApiKeyHeader", "Bearer"]

    def get_security_definition(self, auto_schema: object) -> list[dict[str, str]]:
        return [
            {"type": "apiKey", "in": "header", "name": "X-API-KEY"},
            {"type": "http", "scheme": "bearer"},
        ]


class ErrorItemSerializer(serializers.Serializer):
    loc = serializers.ListField(child=serializers.JSONField())
    msg = serializers.CharField()
    type = serializers.CharField()


class ValidationErrorSerializer(serializers.Serializer):
    detail = ErrorItemSerializer(many=True)


class DetailSerializer(serializers.Serializer):
    detail = serializers.CharField()


class WebhookDeliverySerializer(serializers.Serializer):
    attempt = serializers.IntegerField()
    url = serializers.CharField()
    at_mills = serializers.IntegerField()
    status_code = serializers.IntegerField(allow_null=True)
    ok = serializers.BooleanField()
    error = serializers.CharField(allow_null=True)


class TaskObjectSerializer(serializers.Serializer):
    """The task object of API.md §3."""

    id = serializers.IntegerField()
    task_id = serializers.CharField()
    req_params = serializers.DictField()
    in_queue_mills = serializers.IntegerField(allow_null=True)
    start_mills = serializers.IntegerField(allow_null=True)
    finish_mills = serializers.IntegerField(allow_null=True)
    task_status = serializers.ChoiceField(
        choices=["pending", "running", "finished", "failed", "stop", "canceled"]
    )
    progress = serializers.IntegerField()
    preview = serializers.CharField(allow_null=True)
    message = serializers.CharField(allow_null=True)
    webhook_url = serializers.CharField(allow_blank=True)
    result = serializers.ListField(child=serializers.CharField())
    seeds = serializers.ListField(child=serializers.IntegerField())
    error = serializers.CharField(allow_null=True)
    result_base64 = serializers.ListField(
        child=serializers.CharField(allow_null=True), required=False
    )
    webhook_deliveries = WebhookDeliverySerializer(many=True, required=False)


class TaskListsSerializer(serializers.Serializer):
    history = TaskObjectSerializer(many=True)
    current = TaskObjectSerializer(many=True)
    pending = TaskObjectSerializer(many=True)


DeleteResultSerializer = inline_serializer(
    "DeleteResult",
    {"deleted": serializers.IntegerField(), "files_deleted": serializers.IntegerField()},
)
CancelResultSerializer = inline_serializer(
    "CancelResult",
    {
        "action": serializers.ChoiceField(choices=["canceled", "stopping", "ended"]),
        "task": TaskObjectSerializer(),
    },
)

COMMON_ERRORS = {
    status.HTTP_401_UNAUTHORIZED: OpenApiResponse(
        DetailSerializer, "missing, wrong or revoked key"
    ),
    status.HTTP_403_FORBIDDEN: OpenApiResponse(DetailSerializer, "the key lacks the scope"),
    status.HTTP_429_TOO_MANY_REQUESTS: OpenApiResponse(DetailSerializer, "rate limit"),
}


class DocumentedRoute(APIView):
    """A route answered by an ASGI consumer (``generation.routing``), listed here only so that the
    OpenAPI document describes it; subclasses decorate ``post`` with its schema."""

    required_scope = "generate"

    def post(self, request: Request) -> Response:
        return Response(
            {"detail": "served by the ASGI application; this route only documents it"},
            status=status.HTTP_501_NOT_IMPLEMENTED,
        )


class GenerateSchemaView(DocumentedRoute):
    """Documents ``POST /v1/engine/generate/``; requests are answered by the ASGI consumer."""

    @extend_schema(
        operation_id="generate",
        summary="Generate images (async, stream, binary or JSON result)",
        description=(
            "`stream_output: true` answers `text/event-stream` with one `data: {json}` line "
            "per event; `async_process: true` answers the pending task object; otherwise the "
            "request waits: an image `Accept` (none, `*/*`, `image/*`) gets the first image's "
            "bytes, `Accept: application/json` the finished task object."
        ),
        request=GenerateRequestSerializer,
        responses={
            (200, "application/json"): OpenApiResponse(TaskObjectSerializer, "task object"),
            (200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, "task events"),
            (200, "image/png"): OpenApiResponse(OpenApiTypes.BINARY, "the first image"),
            (200, "image/jpeg"): OpenApiResponse(OpenApiTypes.BINARY, "the first image"),
            (200, "image/webp"): OpenApiResponse(OpenApiTypes.BINARY, "the first image"),
            (204, "application/json"): OpenApiResponse(description="stopped without an image"),
            (413, "application/json"): OpenApiResponse(DetailSerializer),
            (422, "application/json"): OpenApiResponse(ValidationErrorSerializer),
            (500, "application/json"): OpenApiResponse(
                DetailSerializer, "binary mode: the task failed"
            ),
            (503, "application/json"): OpenApiResponse(DetailSerializer, "queue full"),
            (401, "application/json"): COMMON_ERRORS[401],
            (403, "application/json"): COMMON_ERRORS[403],
            (429, "application/json"): COMMON_ERRORS[429],
        },
    )
    def post(self, request: Request) -> Response:
        return super().post(request)


__all__ = [
    "COMMON_ERRORS",
    "CancelResultSerializer",
    "DeleteResultSerializer",
    "DetailSerializer",
    "DocumentedRoute",
    "GenerateSchemaView",
    "OpenApiTypes",
    "TaskListsSerializer",
    "TaskObjectSerializer",
    "ValidationErrorSerializer",
]

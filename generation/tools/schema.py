"""The OpenAPI description of the tool routes (answered by their ASGI consumers)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from generation.schema import (
    COMMON_ERRORS,
    DetailSerializer,
    DocumentedRoute,
    ValidationErrorSerializer,
)
from generation.tools.serializers import DescribeImageSerializer, GenerateMaskSerializer

DescribeAnswer = inline_serializer("DescribeAnswer", {"describe": serializers.CharField()})

MODES = (
    "Queued like generate. By default the request waits for the task and answers as FooocusAPI "
    "does; `async_process: true` answers the pending task object (poll `GET /tasks/{id}`); "
    "`stream_output: true` answers `text/event-stream`."
)


def _responses(answer: object, description: str) -> dict[object, OpenApiResponse]:
    return {
        (200, "application/json"): OpenApiResponse(answer, description),
        (200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, "task events"),
        (409, "application/json"): OpenApiResponse(DetailSerializer, "the task was cancelled"),
        (413, "application/json"): OpenApiResponse(DetailSerializer),
        (422, "application/json"): OpenApiResponse(ValidationErrorSerializer),
        (500, "application/json"): OpenApiResponse(DetailSerializer, "the tool failed"),
        (503, "application/json"): OpenApiResponse(DetailSerializer, "queue full"),
        (401, "application/json"): COMMON_ERRORS[401],
        (403, "application/json"): COMMON_ERRORS[403],
        (429, "application/json"): COMMON_ERRORS[429],
    }


class DescribeImageSchemaView(DocumentedRoute):
    """Documents ``POST /v1/tools/describe-image``."""

    @extend_schema(
        operation_id="describe_image",
        summary="Image to prompt text (Photo: BLIP caption, Anime: WD14 tags)",
        description=MODES + " Fooocus-API's multipart form (`image` file) is accepted too.",
        request=DescribeImageSerializer,
        responses=_responses(OpenApiTypes.OBJECT, "`{describe}`, or the task object"),
    )
    def post(self, request: Request) -> Response:
        return super().post(request)


class GenerateMaskSchemaView(DocumentedRoute):
    """Documents ``POST /v1/tools/generate_mask``."""

    @extend_schema(
        operation_id="generate_mask",
        summary="Image to mask (background removal models, or GroundingDINO + SAM)",
        description=MODES + " The synchronous answer is a JSON string: the mask as base64 PNG.",
        request=GenerateMaskSerializer,
        responses=_responses(OpenApiTypes.ANY, "the base64 PNG string, or the task object"),
    )
    def post(self, request: Request) -> Response:
        return super().post(request)


__all__ = ["DescribeAnswer", "DescribeImageSchemaView", "GenerateMaskSchemaView"]

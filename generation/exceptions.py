"""One error shape for the whole API.

Validation errors answer 422 with the body FastAPI clients of FooocusAPI already parse:
``{"detail": [{"loc": ["body", "<field>", ...], "msg": "...", "type": "..."}]}``.
Every other API error answers ``{"detail": "<message>"}`` with its status.
"""

from __future__ import annotations

from typing import Any

from rest_framework import status
from rest_framework.exceptions import APIException, ErrorDetail, ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler


class ServiceUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "service unavailable"


def _flatten(errors: Any, loc: list[str | int]) -> list[dict[str, Any]]:
    """Turn DRF's nested error structure into a flat list of FastAPI-style items."""
    if isinstance(errors, dict):
        items: list[dict[str, Any]] = []
        for key, value in errors.items():
            items.extend(_flatten(value, loc if key == "non_field_errors" else [*loc, key]))
        return items
    if isinstance(errors, list):
        if errors and all(isinstance(e, ErrorDetail | str) for e in errors):
            return [
                {"loc": loc, "msg": str(e), "type": getattr(e, "code", None) or "invalid"}
                for e in errors
            ]
        items = []
        for index, value in enumerate(errors):
            if value:
                items.extend(_flatten(value, [*loc, index]))
        return items
    return [{"loc": loc, "msg": str(errors), "type": getattr(errors, "code", None) or "invalid"}]


def validation_error_body(errors: Any, location: str = "body") -> dict[str, Any]:
    """The 422 body for DRF serializer ``errors`` (``location`` is "body" or "query")."""
    return {"detail": _flatten(errors, [location])}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF exception handler: 422 for validation errors, ``{"detail": ...}`` otherwise."""
    if isinstance(exc, ValidationError):
        location = getattr(exc, "location", "query")
        return Response(
            validation_error_body(exc.detail, location),
            status=status.HTTP_422_UNPROCESSABLE_ENTITY,
        )
    return exception_handler(exc, context)

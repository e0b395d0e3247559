"""One error base for the API, and one translation of errors into responses.

Every error the API answers is an :class:`ApiError`: a status (from ``rest_framework.status``),
a code, and a body in the shape FastAPI clients of FooocusAPI already parse. Validation errors
answer 422 with ``{"detail": [{"loc": ["body", "<field>", ...], "msg": "...", "type": "..."}]}``;
every other error answers ``{"detail": "<message>"}`` (a few add fields, such as ``task_id``).

:func:`error_parts` is the one translation. The DRF views reach it through
:func:`api_exception_handler` (``REST_FRAMEWORK["EXCEPTION_HANDLER"]``), the generate consumer
and the plain Django views through :func:`error_parts` and :func:`json_error_response`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.http import JsonResponse
from rest_framework import status
from rest_framework.exceptions import APIException, ErrorDetail, ValidationError

if TYPE_CHECKING:
    from rest_framework.response import Response

Headers = dict[str, str]


class ApiError(APIException):
    """An error the API answers with ``status_code`` and :meth:`body`.

    It is a DRF ``APIException``, so DRF's request cycle treats it like its own errors
    (authentication failures raised from an authenticator, say), and our handler renders it.
    """

    status_code: int = status.HTTP_500_INTERNAL_SERVER_ERROR
    default_detail = "internal error"
    default_code = "error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        headers: Headers | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, code)
        self.message = str(self.detail)
        self.headers: Headers = dict(headers or {})
        self.extra: dict[str, Any] = dict(extra or {})

    def body(self) -> dict[str, Any]:
        return {"detail": self.message, **self.extra}


class NotAuthenticated(ApiError):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_detail = "an API key is required"
    default_code = "not_authenticated"


class Forbidden(ApiError):
    status_code = status.HTTP_403_FORBIDDEN
    default_detail = "this API key lacks the required scope"
    default_code = "permission_denied"


class NotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    default_detail = "not found"
    default_code = "not_found"


class MethodNotAllowed(ApiError):
    status_code = status.HTTP_405_METHOD_NOT_ALLOWED
    default_code = "method_not_allowed"


class PayloadTooLarge(ApiError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"


class RequestInvalid(ApiError):
    """422 with FastAPI's list of ``{"loc", "msg", "type"}`` items."""

    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "the request is invalid"
    default_code = "invalid"

    def __init__(self, items: list[dict[str, Any]]) -> None:
        super().__init__()
        self.items = items

    @classmethod
    def from_drf(cls, errors: Any, location: str = "body") -> RequestInvalid:
        """From DRF serializer ``errors`` (``location`` is "body" or "query")."""
        return cls(_flatten(errors, [location]))

    def body(self) -> dict[str, Any]:
        return {"detail": self.items}


class RateLimited(ApiError):
    """429; the client is told when to come back."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "throttled"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class ServiceUnavailable(ApiError):
    """503 (a full queue); with ``retry_after``, the client is told when to come back."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "service unavailable"
    default_code = "unavailable"

    def __init__(self, message: str | None = None, *, retry_after: int | None = None) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        super().__init__(message, headers=headers)


class TaskFailed(ApiError):
    """A binary request whose task failed (or lost its file): 500 naming the task."""

    status_code = status.HTTP_500_INTERNAL_SERVER_ERROR
    default_code = "task_failed"

    def __init__(self, message: str, *, task_id: str, headers: Headers | None = None) -> None:
        super().__init__(message, headers=headers, extra={"task_id": task_id})


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
    return RequestInvalid.from_drf(errors, location).body()


def as_api_error(exc: Exception) -> ApiError | None:
    """The :class:`ApiError` for ``exc``, when it is one we answer in our own shape.

    A DRF ``ValidationError`` becomes a 422 (located in the query when the view says so);
    other DRF errors (throttling, permission) keep DRF's own rendering.
    """
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationError):
        return RequestInvalid.from_drf(exc.detail, getattr(exc, "location", "query"))
    return None


def error_parts(exc: ApiError) -> tuple[int, dict[str, Any], Headers]:
    """Status, body and headers of the response for ``exc``: the one translation."""
    return exc.status_code, exc.body(), dict(exc.headers)


def json_error_response(exc: ApiError) -> JsonResponse:
    """``exc`` as a plain Django response (for views outside DRF)."""
    code, body, headers = error_parts(exc)
    return JsonResponse(body, status=code, headers=headers)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF exception handler: our errors in our shape, DRF's own (throttling, 403) as DRF does."""
    # Imported here: rest_framework.views loads the authentication classes, which import the
    # access module, which imports this one.
    from rest_framework.response import Response
    from rest_framework.views import exception_handler, set_rollback

    error = as_api_error(exc)
    if error is None:
        return exception_handler(exc, context)
    set_rollback()
    code, body, headers = error_parts(error)
    return Response(body, status=code, headers=headers)

"""CORS for the configured origins, on Django's responses (the generate consumer adds the same)."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from rest_framework import status

ALLOWED_HEADERS = "Content-Type, Accept, Authorization, X-API-KEY"
ALLOWED_METHODS = "GET, POST, DELETE, OPTIONS"
EXPOSED_HEADERS = "X-Task-Id, Retry-After"


def cors_headers(origin: str | None) -> list[tuple[str, str]]:
    """The CORS headers for a request from ``origin``: none unless the origin is allowed."""
    allowed = settings.FOOOCUS_CORS_ORIGINS
    if not origin or not allowed:
        return []
    if "*" not in allowed and origin not in allowed:
        return []
    return [
        ("Access-Control-Allow-Origin", "*" if "*" in allowed else origin),
        ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
        ("Access-Control-Allow-Methods", ALLOWED_METHODS),
        ("Access-Control-Expose-Headers", EXPOSED_HEADERS),
        ("Access-Control-Max-Age", "600"),
        ("Vary", "Origin"),
    ]


class ApiHeadersMiddleware:
    """Answers CORS preflights and adds CORS headers for allowed origins."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            response = HttpResponse(status=status.HTTP_204_NO_CONTENT)
        else:
            response = self.get_response(request)
        for name, value in cors_headers(origin):
            response[name] = value
        return response

"""DRF glue for API keys: authentication, per-view scopes, per-key rate limits."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from generation.access import Caller, authenticate, check_rate
from generation.errors import RateLimited


def request_headers(request: Request | HttpRequest) -> dict[str, str]:
    """Header names lower-cased, as :func:`generation.access.authenticate` reads them."""
    return {key.lower(): value for key, value in request.headers.items()}


class ApiKeyAuthentication(BaseAuthentication):
    """``X-API-KEY`` or ``Authorization: Bearer``; anonymous (full access) while auth is off."""

    def authenticate(self, request: Request) -> tuple[Caller, None]:
        # A refused key raises generation.errors.NotAuthenticated, a DRF APIException that the
        # API's exception handler renders.
        return authenticate(request_headers(request)), None

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="fooocus"'


class HasScope(BasePermission):
    """Views declare ``required_scope``: "generate", "read", "admin", "any" (any valid key) or
    None (open to all)."""

    message = "this API key lacks the required scope"

    def has_permission(self, request: Request, view: Any) -> bool:
        scope = getattr(view, "required_scope", "admin")
        if scope is None:
            return True
        caller = request.user
        if not isinstance(caller, Caller):
            return False
        if scope == "any":
            return True
        if not caller.can(scope):
            self.message = f"this API key lacks the '{scope}' scope"
            return False
        return True


class KeyRateThrottle(BaseThrottle):
    """Requests per minute per key (429 with Retry-After)."""

    def __init__(self) -> None:
        self._wait: int | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        caller = request.user
        if not isinstance(caller, Caller):
            return True
        try:
            check_rate(caller)
        except RateLimited as exc:
            self._wait = exc.retry_after
            return False
        return True

    def wait(self) -> float | None:
        return self._wait

"""Who is calling: API keys, scopes and per-key rate limits.

Auth is off while no key exists (FooocusAPI's default, for a server on loopback). It turns on as
soon as ``FOOOCUS_API_KEYS`` is set or a key exists in the database; then every API route needs
``X-API-KEY: <key>`` (FooocusAPI's header) or ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from generation.errors import Forbidden, NotAuthenticated, RateLimited
from generation.models import ApiKey, ApiKeyScope

KEY_PREFIX = "fk"
ALL_SCOPES = (ApiKeyScope.GENERATE.value, ApiKeyScope.READ.value, ApiKeyScope.ADMIN.value)


@dataclass(frozen=True)
class Caller:
    """An authenticated caller. ``key_id`` is recorded on the tasks it creates."""

    key_id: str
    name: str
    scopes: frozenset[str]
    requests_per_minute: int = 0
    max_queued_tasks: int = 0

    def can(self, scope: str) -> bool:
        return ApiKeyScope.ADMIN in self.scopes or scope in self.scopes

    @property
    def is_admin(self) -> bool:
        return ApiKeyScope.ADMIN in self.scopes


ANONYMOUS = Caller(key_id="", name="anonymous", scopes=frozenset({ApiKeyScope.ADMIN.value}))


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def api_key_create(
    *, name: str, scopes: list[str], requests_per_minute: int = 0, max_queued_tasks: int = 0
) -> tuple[ApiKey, str]:
    """Create a key; return the row and the full key text (shown once, never stored)."""
    unknown = set(scopes) - set(ALL_SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be a non-empty subset of {', '.join(ALL_SCOPES)}")
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        name=name,
        prefix=prefix,
        secret_hash=_hash(secret),
        scopes=sorted(set(scopes)),
        requests_per_minute=requests_per_minute,
        max_queued_tasks=max_queued_tasks,
    )
    return key, f"{KEY_PREFIX}_{prefix}_{secret}"


def api_key_revoke(*, prefix: str) -> bool:
    """Revoke a key by its prefix; False when no active key has it."""
    return bool(
        ApiKey.objects.filter(prefix=prefix, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
    )


def _env_keys() -> list[str]:
    return [k.strip() for k in settings.FOOOCUS_API_KEYS.split(",") if k.strip()]


def auth_enabled() -> bool:
    """True once any key is configured (environment or database)."""
    if _env_keys():
        return True
    # Cached briefly: this runs on every request, and keys change rarely.
    enabled = cache.get("fooocus:auth-enabled")
    if enabled is None:
        enabled = ApiKey.objects.filter(revoked_at__isnull=True).exists()
        cache.set("fooocus:auth-enabled", enabled, 5)
    return bool(enabled)


def forget_auth_state() -> None:
    """Call after creating or revoking keys so the change applies at once in this process."""
    cache.delete("fooocus:auth-enabled")


def presented_key(headers: dict[str, str]) -> str | None:
    """The key from ``X-API-KEY`` or ``Authorization: Bearer`` (header names lower-case)."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def authenticate(headers: dict[str, str]) -> Caller:
    """Identify the caller; raises :class:`~generation.errors.NotAuthenticated` (401) when auth
    is on and the key is missing or bad."""
    if not auth_enabled():
        return ANONYMOUS
    key = presented_key(headers)
    if not key:
        raise NotAuthenticated("an API key is required (X-API-KEY or Authorization: Bearer)")
    for index, env_key in enumerate(_env_keys()):
        if hmac.compare_digest(key.encode(), env_key.encode()):
            return Caller(
                key_id=f"env{index}",
                name=f"FOOOCUS_API_KEYS[{index}]",
                scopes=frozenset(ALL_SCOPES),
            )
    parts = key.split("_", 2)
    if len(parts) == 3 and parts[0] == KEY_PREFIX:
        row = ApiKey.objects.filter(prefix=parts[1]).first()
        # Compare even when no row matched, so timing does not tell which prefixes exist.
        expected = row.secret_hash if row is not None else _hash("no-such-key")
        if hmac.compare_digest(_hash(parts[2]), expected) and row is not None:
            if row.revoked_at is not None:
                raise NotAuthenticated("this API key has been revoked")
            ApiKey.objects.filter(pk=row.pk).update(last_used_at=timezone.now())
            return Caller(
                key_id=row.prefix,
                name=row.name,
                scopes=frozenset(row.scopes),
                requests_per_minute=row.requests_per_minute,
                max_queued_tasks=row.max_queued_tasks,
            )
    raise NotAuthenticated("invalid API key")


def require_scope(caller: Caller, scope: str) -> None:
    if not caller.can(scope):
        raise Forbidden(f"this API key lacks the '{scope}' scope")


def check_rate(caller: Caller) -> None:
    """Per-key requests per minute (a fixed one-minute window in the shared cache)."""
    if not caller.key_id:
        return
    limit = caller.requests_per_minute or settings.FOOOCUS_RATE_LIMIT_PER_MINUTE
    if limit <= 0:
        return
    window = int(time.time() // 60)
    key = f"fooocus:rate:{caller.key_id}:{window}"
    cache.add(key, 0, 120)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, 120)
        count = 1
    if count > limit:
        retry_after = max(1, 60 - int(time.time() % 60))
        raise RateLimited(f"rate limit of {limit} requests per minute reached", retry_after)


def queued_task_limit(caller: Caller) -> int:
    """How many waiting tasks this caller may have (0 = no per-key limit)."""
    if not caller.key_id:
        return 0
    return caller.max_queued_tasks or settings.FOOOCUS_MAX_QUEUED_PER_KEY

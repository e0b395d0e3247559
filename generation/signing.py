"""Expiring signed URLs for /outputs and /inputs (``FOOOCUS_SIGNED_FILE_URLS``)."""

from __future__ import annotations

import time

from django.conf import settings
from django.core.signing import BadSignature, Signer
from django.utils.crypto import constant_time_compare

_signer = Signer(salt="fooocus.files")


def _signature(path: str, expires: int) -> str:
    return _signer.signature(f"{path}:{expires}")


def signed_query(path: str, *, ttl: int | None = None) -> str:
    """``?exp=...&sig=...`` for ``path`` (e.g. ``/outputs/2024-01-01/x.png``), or "" when off."""
    if not settings.FOOOCUS_SIGNED_FILE_URLS:
        return ""
    expires = int(time.time()) + (settings.FOOOCUS_SIGNED_URL_TTL if ttl is None else ttl)
    return f"?exp={expires}&sig={_signature(path, expires)}"


def signature_valid(path: str, expires: str | None, signature: str | None) -> bool:
    """True when signing is off, or the signature matches and has not expired."""
    if not settings.FOOOCUS_SIGNED_FILE_URLS:
        return True
    if not expires or not signature or not expires.isdigit():
        return False
    if int(expires) < time.time():
        return False
    try:
        return constant_time_compare(_signature(path, int(expires)), signature)
    except BadSignature:
        return False

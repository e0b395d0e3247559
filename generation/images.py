"""Image inputs: raw base64, ``data:`` URLs or http(s) URLs, decoded before anything is queued."""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

import requests
from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from PIL import Image, UnidentifiedImageError
from rest_framework import serializers

NO_IMAGE_VALUES = {"", "none", "null"}
MAX_REDIRECTS = 5


class ImageInputError(ValueError):
    """An image input that cannot be used; the message says why."""


def _decode_bytes(data: bytes) -> Image.Image:
    if len(data) > settings.FOOOCUS_MAX_IMAGE_BYTES:
        raise ImageInputError(f"image is larger than {settings.FOOOCUS_MAX_IMAGE_BYTES} bytes")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            limit = settings.FOOOCUS_MAX_IMAGE_PIXELS
            if opened.width * opened.height > limit:
                raise ImageInputError(
                    f"image is {opened.width}x{opened.height}, more than {limit} pixels"
                )
            opened.load()
            image = opened.copy()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ImageInputError("not a decodable image") from exc
    if image.mode == "RGBA":
        return image
    return image.convert("RGB")


def _check_public_host(host: str, port: int, *, allow_private: bool | None = None) -> None:
    """Refuse private, loopback and link-local targets (after DNS resolution) unless allowed."""
    if settings.FOOOCUS_ALLOW_PRIVATE_URLS if allow_private is None else allow_private:
        return
    if host.lower() in settings.FOOOCUS_TRUSTED_URL_HOSTS:
        return
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ImageInputError(f"cannot resolve host {host!r}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            raise ImageInputError(
                f"refusing to fetch from non-public address {address} "
                "(set FOOOCUS_ALLOW_PRIVATE_URLS=1 to allow)"
            )


def check_webhook_target(url: str) -> None:
    """A webhook URL must be http(s) to a public address (unless private targets are allowed)."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ImageInputError("must be an http(s) URL")
    _check_public_host(
        parts.hostname,
        parts.port or (443 if parts.scheme == "https" else 80),
        allow_private=settings.FOOOCUS_ALLOW_PRIVATE_WEBHOOKS,
    )


def clean_webhook_url(value: str | None) -> str:
    """A request's ``webhook_url`` field: blank or null is no webhook, else a checked target.

    Raises the serializer's ``ValidationError`` so the 422 names the field.
    """
    value = (value or "").strip()
    if value:
        try:
            check_webhook_target(value)
        except ImageInputError as exc:
            raise serializers.ValidationError(str(exc)) from exc
    return value


def fetch_image_url(url: str) -> Image.Image:
    """Download an image with a timeout and a size cap, checking the target on every redirect."""
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ImageInputError("only http(s) URLs can be fetched")
        _check_public_host(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        try:
            response = requests.get(
                url,
                timeout=settings.FOOOCUS_URL_FETCH_TIMEOUT,
                stream=True,
                allow_redirects=False,
                headers={"User-Agent": "fooocus-api-server"},
            )
        except requests.RequestException as exc:
            raise ImageInputError(f"download failed: {exc.__class__.__name__}") from exc
        with response:
            if response.is_redirect:
                url = urljoin(url, response.headers.get("Location", ""))
                continue
            if response.status_code != 200:
                raise ImageInputError(f"download failed with HTTP {response.status_code}")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_content(64 * 1024):
                size += len(chunk)
                if size > settings.FOOOCUS_MAX_IMAGE_BYTES:
                    raise ImageInputError(
                        f"image is larger than {settings.FOOOCUS_MAX_IMAGE_BYTES} bytes"
                    )
                chunks.append(chunk)
        return _decode_bytes(b"".join(chunks))
    raise ImageInputError("too many redirects")


def decode_image_input(value: str) -> Image.Image:
    """Decode one image string: ``data:`` URL, http(s) URL, or raw base64."""
    text = value.strip()
    if text.lower().startswith(("http://", "https://")):
        return fetch_image_url(text)
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise ImageInputError("data URLs must be base64-encoded")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError("not valid base64, a data: URL or an http(s) URL") from exc
    return _decode_bytes(data)


@extend_schema_field(
    {"type": "string", "nullable": True, "description": "base64, data: URL or http(s) URL"}
)
class ImageInputField(serializers.Field):
    """A request image: decoded to a PIL image during validation; "", "None" and null = none."""

    default_error_messages = {"invalid": "{reason}"}

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_null", True)
        kwargs.setdefault("default", None)
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def validate_empty_values(self, data: object) -> tuple[bool, object]:
        if isinstance(data, str) and data.strip().lower() in NO_IMAGE_VALUES:
            return True, None
        return super().validate_empty_values(data)

    def to_internal_value(self, data: object) -> Image.Image:
        if not isinstance(data, str):
            self.fail("invalid", reason="an image must be a string (base64, data: URL or URL)")
        try:
            return decode_image_input(str(data))
        except ImageInputError as exc:
            self.fail("invalid", reason=str(exc))
            raise  # unreachable: fail() raises

    def to_representation(self, value: object) -> object:
        return value

"""What an exposed server must refuse or protect: SSRF, limits, CORS, headers, signed webhooks,
signed file URLs. Over real HTTP against real servers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from tests.server import LiveServer, start_server, wait_for_task

LIGHTNING = {"performance_selection": "Lightning"}
SECRET = "whsec_" + base64.b64encode(b"a-very-secret-signing-key").decode()


def png(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


class Site:
    """A local HTTP server: serves a PNG at /img.png, redirects /jump to ``target``, and records
    webhook POSTs."""

    def __init__(self, host: str = "127.0.0.1", target: str = "") -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/jump":
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.end_headers()
                    return
                data = png()
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                site.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, demo_models: Path) -> Iterator[LiveServer]:
    live = start_server(
        tmp_path_factory.mktemp("guarded"),
        demo_models,
        extra_env={
            "FOOOCUS_WEBHOOK_SECRET": SECRET,
            "FOOOCUS_CORS_ORIGINS": "https://app.example",
            "FOOOCUS_SIGNED_FILE_URLS": "1",
            "FOOOCUS_SIGNED_URL_TTL": "3",
            "FOOOCUS_MAX_IMAGE_PIXELS": "10000",
            "FOOOCUS_MAX_PROMPT_CHARS": "500",
            "FOOOCUS_TRUSTED_URL_HOSTS": "127.0.0.2",
            "FOOOCUS_ALLOW_PRIVATE_WEBHOOKS": "0",
        },
    )
    yield live
    live.stop(signal.SIGTERM)


def generate(server: LiveServer, body: dict[str, Any], **kw: Any) -> requests.Response:
    return requests.post(f"{server.url}/v1/engine/generate/", json=body, timeout=60, **kw)


def refused_image(server: LiveServer, url: str) -> str:
    response = generate(server, {**LIGHTNING, "uov_method": "Upscale (2x)", "uov_input_image": url})
    assert response.status_code == 422, response.text
    item = response.json()["detail"][0]
    assert item["loc"] == ["body", "uov_input_image"]
    return str(item["msg"])


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x.png",
        "http://10.1.2.3/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:9/x.png",
        "http://[::1]:9/x.png",
        "http://0.0.0.0:9/x.png",
    ],
)
def test_ssrf_to_private_addresses_is_refused(guarded: LiveServer, url: str) -> None:
    assert "non-public address" in refused_image(guarded, url)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://127.0.0.1:70/x", "ftp://x/y"])
def test_ssrf_other_schemes_are_refused(guarded: LiveServer, url: str) -> None:
    # Not http(s): it is not taken for a URL at all, so it fails as an image.
    assert refused_image(guarded, url)


def test_redirect_to_loopback_is_refused_on_every_hop(guarded: LiveServer) -> None:
    inner = Site("127.0.0.1")
    outer = Site("127.0.0.2", target=f"{inner.url}/img.png")
    try:
        # The trusted host itself is fetched (the request then runs, or fails for another reason)
        direct = generate(
            guarded,
            {**LIGHTNING, "uov_method": "Upscale (2x)", "uov_input_image": f"{outer.url}/img.png"},
        )
        if direct.status_code != 200:
            assert direct.json()["detail"][0]["loc"] != ["body", "uov_input_image"]
        # ... but its redirect to loopback is not followed.
        assert "non-public address" in refused_image(guarded, f"{outer.url}/jump")
    finally:
        inner.close()
        outer.close()


def test_oversized_images_and_prompts_are_422(guarded: LiveServer) -> None:
    big = base64.b64encode(png((128, 128))).decode()
    message = refused_image(guarded, big)
    assert "more than 10000 pixels" in message
    long_prompt = generate(guarded, {**LIGHTNING, "prompt": "x" * 501})
    assert long_prompt.status_code == 422
    assert long_prompt.json()["detail"][0]["loc"] == ["body", "prompt"]


def test_private_webhook_targets_are_refused(guarded: LiveServer) -> None:
    response = generate(
        guarded, {**LIGHTNING, "async_process": True, "webhook_url": "http://127.0.0.1:9/hook"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "webhook_url"]


def test_cors_only_for_configured_origins(guarded: LiveServer, server: LiveServer) -> None:
    preflight = requests.options(
        f"{guarded.url}/v1/engine/generate/",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "X-API-KEY" in preflight.headers["Access-Control-Allow-Headers"]
    tasks = requests.get(
        f"{guarded.url}/tasks", headers={"Origin": "https://app.example"}, timeout=10
    )
    assert tasks.headers["Access-Control-Allow-Origin"] == "https://app.example"
    other = requests.get(
        f"{guarded.url}/tasks", headers={"Origin": "https://evil.example"}, timeout=10
    )
    assert "Access-Control-Allow-Origin" not in other.headers
    # The default server allows no cross-origin use at all.
    default = requests.get(
        f"{server.url}/tasks", headers={"Origin": "https://app.example"}, timeout=10
    )
    assert "Access-Control-Allow-Origin" not in default.headers


def test_security_headers(guarded: LiveServer) -> None:
    for response in (
        requests.get(f"{guarded.url}/tasks", timeout=10),
        generate(guarded, {"image_number": 0}),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
    assert (
        requests.get(f"{guarded.url}/admin/login/", timeout=10).headers["X-Frame-Options"] == "DENY"
    )


def _standard_webhooks_signature(secret: str, headers: dict[str, str], body: bytes) -> str:
    """The receiver's side, written from the Standard Webhooks description, not our code."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def test_webhooks_are_signed_and_filtered(guarded: LiveServer, tmp_path: Path) -> None:
    # Private targets are refused on this server, so deliver to a host it trusts.
    receiver = Site("127.0.0.2")
    try:
        task_id = generate(
            guarded,
            {
                **LIGHTNING,
                "async_process": True,
                "webhook_url": f"{receiver.url}/hook",
                "webhook_events": ["queued", "started", "finished"],
            },
        ).json()["task_id"]
        wait_for_task(guarded, task_id)
        deadline = time.monotonic() + 60
        while len(receiver.posts) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        events = [json.loads(body)["event"] for _, body in receiver.posts]
        assert events == ["queued", "started", "finished"]
        for headers, body in receiver.posts:
            assert headers["webhook-signature"] == _standard_webhooks_signature(
                SECRET, headers, body
            )
            assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
            tampered = (
                body.replace(b"finished", b"failed!!") if b"finished" in body else body + b" "
            )
            assert headers["webhook-signature"] != _standard_webhooks_signature(
                SECRET, headers, tampered
            )
    finally:
        receiver.close()


def test_signed_file_urls_expire(guarded: LiveServer) -> None:
    task = generate(guarded, LIGHTNING, headers={"Accept": "application/json"}).json()
    url = task["result"][0]
    assert "sig=" in url
    assert "exp=" in url
    assert requests.get(url, timeout=10).status_code == 200
    bare = url.split("?", 1)[0]
    assert requests.get(bare, timeout=10).status_code == 403
    assert requests.get(url.replace("sig=", "sig=x"), timeout=10).status_code == 403
    time.sleep(4.5)
    assert requests.get(url, timeout=10).status_code == 403

"""API keys, scopes, per-key visibility and limits, over real HTTP against a server with auth on."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.server import ROOT, LiveServer, apikey, start_server

ADMIN = "env-admin-key-for-tests"
LIGHTNING = {"performance_selection": "Lightning"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, demo_models: Path) -> Iterator[LiveServer]:
    live = start_server(
        tmp_path_factory.mktemp("secured"),
        demo_models,
        extra_env={"FOOOCUS_API_KEYS": ADMIN, "FOOOCUS_MAX_BODY_BYTES": "200000"},
    )
    yield live
    live.stop(signal.SIGTERM)


def call(server: LiveServer, method: str, path: str, key: str | None = None, **kw: Any) -> Any:
    headers = dict(kw.pop("headers", {}))
    if key:
        headers["X-API-KEY"] = key
    return requests.request(method, f"{server.url}{path}", headers=headers, timeout=60, **kw)


def submit(server: LiveServer, key: str, **extra: Any) -> requests.Response:
    return call(
        server,
        "POST",
        "/v1/engine/generate/",
        key,
        json={**LIGHTNING, "async_process": True, **extra},
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/tasks"),
        ("GET", "/tasks/" + "0" * 32),
        ("POST", "/tasks/" + "0" * 32 + "/cancel"),
        ("POST", "/v1/engine/control?action=stop"),
        ("GET", "/v1/engines/all-models"),
        ("GET", "/v1/engines/styles"),
        ("GET", "/v1/engines/options"),
        ("POST", "/v1/engine/generate/"),
    ],
)
def test_missing_and_wrong_keys_are_401(secured: LiveServer, method: str, path: str) -> None:
    missing = call(secured, method, path, json={})
    assert missing.status_code == 401, missing.text
    assert "key" in missing.json()["detail"]
    wrong = call(secured, method, path, "fk_deadbeef_not-the-secret", json={})
    assert wrong.status_code == 401
    assert call(secured, method, path, "garbage", json={}).status_code == 401


def test_public_routes_stay_public(secured: LiveServer) -> None:
    assert requests.get(f"{secured.url}/ping", timeout=10).text == "pong"
    assert requests.get(f"{secured.url}/", timeout=10).status_code == 200


def test_env_key_works_with_both_headers(secured: LiveServer) -> None:
    assert call(secured, "GET", "/tasks", ADMIN).status_code == 200
    bearer = requests.get(
        f"{secured.url}/tasks", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
    )
    assert bearer.status_code == 200


def test_scopes_visibility_and_revocation(secured: LiveServer) -> None:
    alice = apikey(secured, "create", "alice")  # generate + read
    bob = apikey(secured, "create", "bob")
    reader = apikey(secured, "create", "reader", "--scope", "read")
    assert alice.startswith("fk_")
    listing = apikey(secured, "list")
    assert "alice" in listing
    assert alice.split("_", 2)[2] not in listing  # the secret is never shown again

    task_id = submit(secured, alice).json()["task_id"]
    wait_for_task_as(secured, task_id, alice)
    # Bob cannot see or cancel Alice's task; the admin can see it.
    assert call(secured, "GET", f"/tasks/{task_id}", bob).status_code == 404
    assert call(secured, "POST", f"/tasks/{task_id}/cancel", bob).status_code == 404
    assert call(secured, "GET", f"/tasks/{task_id}", ADMIN).status_code == 200
    history = call(secured, "GET", "/tasks?query=history&page_size=100", bob).json()["history"]
    assert task_id not in [t["task_id"] for t in history]
    mine = call(secured, "GET", "/tasks?query=history&page_size=100", alice).json()["history"]
    assert task_id in [t["task_id"] for t in mine]

    # A read key cannot generate, control or delete.
    refused = submit(secured, reader)
    assert refused.status_code == 403
    assert "generate" in refused.json()["detail"]
    assert call(secured, "POST", "/v1/engine/control?action=stop", alice).status_code == 403
    delete = call(secured, "DELETE", "/tasks?start_at=2000-01-01T00:00:00", alice)
    assert delete.status_code == 403

    # Revoked keys stop working at once.
    apikey(secured, "revoke", alice.split("_")[1])
    revoked = call(secured, "GET", "/tasks", alice)
    assert revoked.status_code == 401
    assert "revoked" in revoked.json()["detail"]


def wait_for_task_as(server: LiveServer, task_id: str, key: str) -> None:
    headers = {"X-API-KEY": key}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = requests.get(f"{server.url}/tasks/{task_id}", headers=headers, timeout=10).json()
        if body["task_status"] not in ("pending", "running"):
            return
        time.sleep(0.1)
    raise TimeoutError(task_id)


def test_rate_limit_answers_429_with_retry_after(secured: LiveServer) -> None:
    limited = apikey(secured, "create", "limited", "--rpm", "3")
    codes = [call(secured, "GET", "/v1/engines/styles", limited).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    over = call(secured, "GET", "/v1/engines/styles", limited)
    assert over.status_code == 429
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    over_generate = submit(secured, limited)
    assert over_generate.status_code == 429
    assert "rate limit" in over_generate.json()["detail"]


def test_per_key_queue_limit(secured: LiveServer) -> None:
    key = apikey(secured, "create", "one-at-a-time", "--max-queued", "1")
    slow = {"performance_selection": "Speed", "overwrite_step": 200, "image_number": 4}
    first = submit(secured, ADMIN, **slow).json()["task_id"]  # keeps the worker busy
    mine = submit(secured, key)
    assert mine.status_code == 200
    second = submit(secured, key)
    assert second.status_code == 429
    assert "waiting tasks" in second.json()["detail"]
    call(secured, "POST", f"/tasks/{first}/cancel", ADMIN)
    wait_for_task_as(secured, mine.json()["task_id"], key)


def test_body_limit_is_413(secured: LiveServer) -> None:
    response = submit(secured, ADMIN, prompt="x" * 300_000)
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]


def test_admin_key_controls_and_deletes(secured: LiveServer) -> None:
    task_id = submit(secured, ADMIN).json()["task_id"]
    wait_for_task_as(secured, task_id, ADMIN)
    control = call(secured, "POST", "/v1/engine/control?action=skip", ADMIN)
    assert control.status_code == 200
    deleted = call(secured, "DELETE", "/tasks?start_at=2000-01-01T00:00:00Z", ADMIN)
    assert deleted.status_code == 200
    assert deleted.json()["deleted"] >= 1
    assert call(secured, "GET", f"/tasks/{task_id}", ADMIN).status_code == 404


def test_serve_refuses_a_public_address_without_keys(tmp_path: Path, demo_models: Path) -> None:
    import os

    env = {
        **os.environ,
        "FOOOCUS_OUTPUTS_DIR": str(tmp_path / "outputs"),
        "FOOOCUS_MODELS_DIR": str(demo_models),
        "DJANGO_SECRET_KEY": "tests-only-secret",
    }
    env.pop("FOOOCUS_API_KEYS", None)
    done = subprocess.run(
        [sys.executable, "manage.py", "serve", "--preset", "demo", "--host", "0.0.0.0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "refusing to serve 0.0.0.0 without API keys" in done.stderr


def test_metrics_need_an_admin_key_once_auth_is_on(secured: LiveServer) -> None:
    assert call(secured, "GET", "/metrics").status_code == 401
    reader = apikey(secured, "create", "metrics-reader", "--scope", "read")
    assert call(secured, "GET", "/metrics", reader).status_code == 403
    scraped = requests.get(
        f"{secured.url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
    )
    assert scraped.status_code == 200
    assert "fooocus_queue_depth" in scraped.text
    assert requests.get(f"{secured.url}/healthz", timeout=10).status_code == 200

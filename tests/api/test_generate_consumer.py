"""The generate consumer in-process, through Channels' ``HttpCommunicator`` (no daphne, no worker):
its refusals in the API's error shape, and a request that is queued.

The end-to-end tests (``test_generate.py``, ``test_queue.py``) cover what only a real server
shows; these cover the consumer's own decisions, fast.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import HttpCommunicator

from generation import announce
from generation.catalog import get_catalog
from generation.consumers import GenerateConsumer
from history import services
from history.models import Task, TaskStatus

pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/v1/engine/generate/"


@pytest.fixture(autouse=True)
def demo_settings(settings: Any, demo_models: Path) -> Iterator[None]:
    settings.FOOOCUS_MODELS_DIR = demo_models
    settings.FOOOCUS_PRESET = "demo"
    settings.FOOOCUS_API_KEYS = ""
    get_catalog.cache_clear()
    yield
    get_catalog.cache_clear()


def call(
    body: bytes | dict[str, Any],
    method: str = "POST",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> dict[str, Any]:
    """One request to the consumer; the whole response."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def go() -> dict[str, Any]:
        communicator = HttpCommunicator(
            GenerateConsumer.as_asgi(),
            method,
            PATH,
            body=data,
            headers=[(b"host", b"testserver"), *headers],
        )
        return await communicator.get_response(timeout=120)

    response: dict[str, Any] = async_to_sync(go)()
    response["headers"] = {
        bytes(k).decode().lower(): bytes(v).decode() for k, v in response["headers"]
    }
    return response


def body_of(response: dict[str, Any]) -> Any:
    assert response["headers"]["content-type"] == "application/json"
    return json.loads(response["body"])


def test_a_bad_field_is_a_422_naming_it_and_queues_nothing() -> None:
    response = call({"performance_selection": "Warp", "async_process": True})
    assert response["status"] == 422
    detail = body_of(response)["detail"]
    assert [item["loc"] for item in detail] == [["body", "performance_selection"]]
    assert detail[0]["type"] == "invalid_choice"
    assert "Warp" in detail[0]["msg"]
    assert Task.objects.count() == 0


def test_a_body_that_is_not_json_is_a_422_at_the_body() -> None:
    response = call(b"{not json")
    assert response["status"] == 422
    (item,) = body_of(response)["detail"]
    assert item["loc"] == ["body"]
    assert item["type"] == "json_invalid"
    assert item["msg"].startswith("invalid JSON: ")


def test_only_post_is_answered() -> None:
    response = call(b"", method="GET")
    assert response["status"] == 405
    assert response["headers"]["allow"] == "POST"
    assert body_of(response) == {"detail": "Method not allowed; POST a JSON body"}


def test_an_oversized_body_is_a_413(settings: Any) -> None:
    settings.FOOOCUS_MAX_BODY_BYTES = 100
    response = call({"prompt": "x" * 200})
    assert response["status"] == 413
    assert body_of(response) == {"detail": "request body larger than 100 bytes"}


def test_a_missing_key_is_a_401_once_keys_exist(settings: Any) -> None:
    settings.FOOOCUS_API_KEYS = "sesame"
    refused = call({"async_process": True})
    assert refused["status"] == 401
    assert body_of(refused) == {
        "detail": "an API key is required (X-API-KEY or Authorization: Bearer)"
    }
    accepted = call({"async_process": True}, headers=((b"x-api-key", b"sesame"),))
    assert accepted["status"] == 200
    assert Task.objects.get().api_key == "env0"


def test_an_async_request_is_queued_and_wakes_the_workers() -> None:
    woken = threading.Event()
    announce.local_worker_add(woken.set)
    try:
        response = call({"prompt": "a red fox", "image_seed": 7, "async_process": True})
    finally:
        announce.local_worker_remove(woken.set)
    assert response["status"] == 200
    task = body_of(response)
    assert task["task_status"] == "pending"
    assert response["headers"]["x-task-id"] == task["task_id"]
    row = Task.objects.get(task_id=task["task_id"])
    assert row.status == TaskStatus.PENDING
    assert row.req_params["prompt"] == "a red fox"
    assert row.req_params["image_seed"] == 7
    # The wake-up goes out once the row is committed.
    assert woken.is_set()


def test_a_full_queue_is_a_503_with_retry_after(settings: Any) -> None:
    settings.FOOOCUS_QUEUE_SIZE = 1
    services.task_create(req_params={}, webhook_url="", base_url="", queue_limit=1)
    response = call({"async_process": True})
    assert response["status"] == 503
    assert int(response["headers"]["retry-after"]) > 0
    assert "detail" in body_of(response)
    assert Task.objects.count() == 1

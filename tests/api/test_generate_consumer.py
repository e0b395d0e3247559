"""The generate consumer in-process, through Channels' ``HttpCommunicator`` (no daphne): its
refusals in the API's error shape, a request that is queued, a stream ended by a cancel, and a
stream served by an in-process worker on the demo engine.

The end-to-end tests (``test_generate.py``, ``test_queue.py``) cover what only a real server
shows; these cover the consumer's own decisions, fast.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import HttpCommunicator
from PIL import Image

from generation import announce
from generation.bootstrap import build_engine
from generation.catalog import get_catalog
from generation.consumers import GenerateConsumer
from generation.control import task_cancel_and_notify
from generation.webhooks import WebhookSender
from generation.worker import EngineWorker
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


def sse_events(body: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(block.removeprefix("data: "))
        for block in body.decode().split("\n\n")
        if block.startswith("data: ")
    ]


async def _task_row() -> Task:
    """The row the consumer is about to write (polled: the consumer makes its id)."""
    for _ in range(600):
        task = await database_sync_to_async(Task.objects.first)()
        if task is not None:
            return task
        await asyncio.sleep(0.05)
    raise AssertionError("the consumer queued nothing")


def test_a_stream_ends_with_the_cancel_announced_by_another_thread() -> None:
    """The cancel service runs on a web thread; its announcement reaches the waiting stream
    through the channel layer, in the one end-event shape."""

    async def scenario() -> dict[str, Any]:
        communicator = HttpCommunicator(
            GenerateConsumer.as_asgi(),
            "POST",
            PATH,
            body=json.dumps({"stream_output": True}).encode(),
            headers=[(b"host", b"testserver")],
        )
        answer = asyncio.ensure_future(communicator.get_response(timeout=120))
        task = await _task_row()
        outcome = await sync_to_async(task_cancel_and_notify, thread_sensitive=False)(
            task_id=task.task_id
        )
        assert outcome is not None
        assert outcome.action == "canceled"
        return await answer

    response = async_to_sync(scenario)()
    events = sse_events(response["body"])
    assert [e["task_status"] for e in events] == ["pending", "canceled"]
    assert events[0]["message"] == "Waiting in queue ..."
    assert events[-1] == {
        "task_id": events[0]["task_id"],
        "task_status": "canceled",
        "progress": 0,
        "preview": None,
        "message": "Canceled",
        "images": [],
    }


def served_by_an_in_process_worker(
    request: dict[str, Any], accept: bytes = b"*/*"
) -> dict[str, Any]:
    """POST ``request`` with an engine worker (real engine, demo models) and the announcer on the
    consumer's event loop, as ``serve`` runs them; the whole response."""

    async def scenario() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        layer = get_channel_layer()
        assert layer is not None
        worker = EngineWorker(
            engine_factory=build_engine,
            announcer=announce.Announcer(
                publisher=announce.LoopPublisher(loop, layer), webhooks=WebhookSender()
            ),
            name="in-process",
            poll_seconds=0.2,
        )
        announce.local_worker_add(worker.wake)
        worker.start()
        try:
            communicator = HttpCommunicator(
                GenerateConsumer.as_asgi(),
                "POST",
                PATH,
                body=json.dumps(request).encode(),
                headers=[(b"host", b"testserver"), (b"accept", accept)],
            )
            return await communicator.get_response(timeout=300)
        finally:
            await loop.run_in_executor(None, worker.stop)
            announce.local_worker_remove(worker.wake)

    response: dict[str, Any] = async_to_sync(scenario)()
    return response


@pytest.fixture
def outputs(settings: Any, tmp_path: Path) -> Path:
    settings.FOOOCUS_OUTPUTS_DIR = tmp_path / "outputs"
    settings.FOOOCUS_INPUTS_DIR = tmp_path / "inputs"
    return tmp_path / "outputs"


def test_a_stream_served_by_an_in_process_worker_on_the_demo_engine(outputs: Path) -> None:
    """Progress, one event per sampling step, then the end event with the image's URL."""
    response = served_by_an_in_process_worker(
        {"performance_selection": "Lightning", "image_seed": 3, "stream_output": True}
    )
    assert response["status"] == 200
    events = sse_events(response["body"])
    assert events[0]["message"] == "Waiting in queue ..."
    assert events[1]["message"] == "Loading models ..."
    steps = [e["message"] for e in events if e["message"].startswith("Sampling step")]
    assert steps == [f"Sampling step {k}/4, image 1/1 ..." for k in range(1, 5)]
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)
    last = events[-1]
    assert (last["task_status"], last["message"], last["progress"]) == ("finished", "Finished", 100)
    (url,) = last["images"]
    assert url.startswith("http://testserver/outputs/")
    task = Task.objects.get(task_id=last["task_id"])
    assert task.status == TaskStatus.FINISHED
    assert task.worker == "in-process"
    (relative,) = task.result
    assert url.endswith(relative)
    with Image.open(outputs / relative) as image:
        assert image.format == "PNG"


def test_an_image_grid_is_written_in_the_requested_format(outputs: Path) -> None:
    """The grid goes through the same encoder as the images: a .webp grid is a WebP file."""
    response = served_by_an_in_process_worker(
        {
            "performance_selection": "Lightning",
            "image_number": 2,
            "image_seed": 5,
            "output_format": "webp",
            "generate_image_grid": True,
        },
        accept=b"application/json",
    )
    assert response["status"] == 200
    task = Task.objects.get()
    assert task.status == TaskStatus.FINISHED
    assert task.seeds[-1] == -1  # the grid's entry
    assert len(task.result) == 3
    sizes = []
    for relative in task.result:
        assert relative.endswith(".webp")
        with Image.open(outputs / relative) as image:
            assert image.format == "WEBP"
            sizes.append(image.size)
    (width, height) = sizes[0]
    assert sizes[2] == (2 * width, height)

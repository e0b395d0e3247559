"""The user's three reference clients (shared/seed/reference_clients.md), verbatim but for the
port, against the real server on the demo preset."""

from __future__ import annotations

import ast
import contextlib
import io
import time

import requests

from tests.server import LiveServer


def test_async_client(server: LiveServer) -> None:
    import json

    import requests

    endpoint = f"{server.url}/v1/engine/generate/"
    params = {
        "prompt": "",
        "negative_prompt": "",
        "performance_selection": "Lightning",
        "async_process": True,
        "webhook_url": "",
    }
    res = requests.post(url=endpoint, data=json.dumps(params), timeout=60)
    print(res.json())

    # "Then GET http://127.0.0.1:7866/tasks/{task_id} until it ends."
    body = res.json()
    assert res.status_code == 200
    assert body["task_status"] == "pending"
    assert len(body["task_id"]) == 32
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        task = requests.get(f"{server.url}/tasks/{body['task_id']}", timeout=10).json()
        if task["task_status"] in ("finished", "failed", "stop", "canceled"):
            break
        time.sleep(0.1)
    assert task["task_status"] == "finished", task
    assert len(task["result"]) == 1
    assert task["result"][0].startswith(f"{server.url}/outputs/")
    image = requests.get(task["result"][0], timeout=10)
    assert image.status_code == 200
    assert image.headers["Content-Type"] == "image/png"


def test_stream_client(server: LiveServer) -> None:
    import json

    import requests

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        endpoint = f"{server.url}/v1/engine/generate/"
        params = {
            "prompt": "",
            "negative_prompt": "",
            "performance_selection": "Lightning",
            "stream_output": True,
            "webhook_url": "",
        }
        res = requests.post(url=endpoint, data=json.dumps(params), stream=True, timeout=60)
        for line in res.iter_lines(chunk_size=8192):
            line = line.decode("utf-8").split("\n")[0]
            try:
                json_data = json.loads(line[6:])
                if json_data["preview"] is not None:
                    json_data["preview"] = "..."
            except json.decoder.JSONDecodeError:
                continue
            print(json_data)

    events = [ast.literal_eval(line) for line in printed.getvalue().splitlines() if line]
    assert res.headers["Content-Type"].startswith("text/event-stream")
    steps = [e for e in events if e["message"].startswith("Sampling step")]
    assert [e["message"] for e in steps] == [
        f"Sampling step {k}/4, image 1/1 ..." for k in range(1, 5)
    ]
    assert all(e["preview"] == "..." for e in steps)
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)
    last = events[-1]
    assert last["message"] == "Finished"
    assert last["task_status"] == "finished"
    assert last["progress"] == 100
    assert len(last["images"]) == 1
    assert requests.get(last["images"][0], timeout=10).status_code == 200


def test_binary_client(server: LiveServer) -> None:
    import json
    from io import BytesIO

    import requests
    from PIL import Image

    endpoint = f"{server.url}/v1/engine/generate/"
    params = {
        "prompt": "",
        "negative_prompt": "",
        "performance_selection": "Lightning",
        "async_process": False,
        "stream_output": False,
        "webhook_url": "",
    }
    res = requests.post(url=endpoint, data=json.dumps(params), timeout=60)
    image = Image.open(BytesIO(res.content))
    print(image.size)

    assert res.status_code == 200
    assert res.headers["Content-Type"] == "image/png"
    assert image.size == (64, 64)


def test_the_clients_send_no_accept_surprises(server: LiveServer) -> None:
    """requests sends ``Accept: */*``; a client sending no Accept at all also gets the image."""
    response = requests.post(
        f"{server.url}/v1/engine/generate/",
        data=b'{"performance_selection": "Lightning"}',
        headers={"Accept": ""},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"

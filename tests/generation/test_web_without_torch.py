"""A web process serves every API route without importing torch, diffusers or transformers.

Run in a fresh interpreter (this test process has torch loaded already): it imports the ASGI
application, drives each route in-process (Django's test client for the DRF views and pages,
Channels' HttpCommunicator for the generate consumer, which validates a request with the
engine's own check and queues it) and then looks at ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.server import ROOT, process_env

SCRIPT = r"""
import asyncio, base64, io, json, os, sys

import django
django.setup()

from django.core.management import call_command
call_command("migrate", verbosity=0)

from channels.testing import HttpCommunicator
from django.contrib.auth import get_user_model
from django.test import Client
from PIL import Image

from fooocus_site.asgi import application

HEAVY = ("torch", "diffusers", "transformers")
seen = {}


def png(color, size=(64, 64)):
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


async def generate(body):
    communicator = HttpCommunicator(
        application,
        "POST",
        "/v1/engine/generate/",
        body=json.dumps(body).encode(),
        headers=[(b"content-type", b"application/json"), (b"host", b"testserver")],
    )
    response = await communicator.get_response(timeout=60)
    return response["status"], json.loads(response["body"] or b"null")


def run(body):
    status, answer = asyncio.run(generate(body))
    seen[f"POST generate {sorted(body)}"] = status
    return status, answer


lightning = {"performance_selection": "Lightning", "prompt": "a cat", "async_process": True}
status, task = run(lightning)
assert status == 200, (status, task)
assert task["task_status"] == "pending", task
task_id = task["task_id"]
mask = Image.new("L", (64, 64), 0)
mask.paste(255, (16, 16, 48, 48))
buffer = io.BytesIO()
mask.save(buffer, format="PNG")
status, inpaint = run(
    {
        **lightning,
        "inpaint_input_image": png((200, 40, 40)),
        "inpaint_mask_image_upload": base64.b64encode(buffer.getvalue()).decode(),
    }
)
assert status == 200, (status, inpaint)
status, prompted = run(
    {**lightning, "controlnet_image": [{"cn_img": png((10, 200, 10)), "cn_type": "PyraCanny"}]}
)
assert status == 200, (status, prompted)
status, refused = run({**lightning, "base_model_name": "no-such-model.safetensors"})
assert status == 422 and refused["detail"][0]["loc"] == ["body", "base_model_name"], refused
status, refused = run({**lightning, "inpaint_input_image": png((1, 2, 3))})
assert status == 422, refused  # an all-black mask and no outpaint: the engine's check refuses

client = Client()
gets = [
    "/ping", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/", "/example.html",
    "/tasks", "/tasks?query=history&page=0", "/tasks?query=pending", f"/tasks/{task_id}",
    "/tasks/no-such-task", "/v1/engines/all-models", "/v1/engines/styles",
    "/v1/engines/presets", "/v1/engines/options", "/outputs/2020-01-01/none.png",
    "/inputs/none.png",
]
for path in gets:
    seen[f"GET {path}"] = client.get(path).status_code
posts = [
    (f"/tasks/{task_id}/cancel", {}),
    ("/v1/engine/control", {"action": "skip"}),
]
for path, body in posts:
    seen[f"POST {path}"] = client.post(path, body, content_type="application/json").status_code
seen["DELETE /tasks"] = client.delete("/tasks?start_at=2000-01-01T00:00:00").status_code

admin = get_user_model().objects.create_superuser("admin", "a@example.com", "pw")
client.force_login(admin)
for path in ["/admin/", "/admin/history/task/", f"/admin/queue/", "/admin/queue/state"]:
    seen[f"GET {path}"] = client.get(path).status_code

print(json.dumps({"seen": seen, "heavy": [name for name in HEAVY if name in sys.modules]}))
"""


def test_web_process_serves_every_route_without_torch(tmp_path: Path, demo_models: Path) -> None:
    env = {
        **process_env(tmp_path, demo_models),
        "DJANGO_SETTINGS_MODULE": "fooocus_site.settings",
        "FOOOCUS_PRESET": "demo",
    }
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    seen = report["seen"]
    # Every route answered (a 404 for the missing task and files, never a server error).
    # /readyz is 503 here: no engine worker runs in this process, which is what it reports.
    assert seen.pop("GET /readyz") == 503
    failed = {route: status for route, status in seen.items() if status >= 500}
    assert not failed, failed
    assert seen["GET /v1/engines/all-models"] == 200
    assert seen["GET /openapi.json"] == 200
    assert seen["GET /admin/history/task/"] == 200
    assert report["heavy"] == [], f"a web process imported {report['heavy']}"

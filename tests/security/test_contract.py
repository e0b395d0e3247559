"""The published contract: the OpenAPI document, Swagger UI served offline, and a schemathesis
fuzz run against the live server that must find no 5xx and no response breaking the schema."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.server import LiveServer, start_server

FUZZ_EXAMPLES = int(os.environ.get("FOOOCUS_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def fuzz_target(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path
) -> Iterator[LiveServer]:
    # The operator's cost caps keep each valid fuzzed request to one small, short image, so
    # the fuzzer can run every mode for real in a few minutes on a CPU.
    live = start_server(
        tmp_path_factory.mktemp("fuzz"),
        demo_models,
        extra_env={
            "FOOOCUS_MAX_IMAGE_NUMBER": "1",
            "FOOOCUS_MAX_STEPS": "4",
            "FOOOCUS_MAX_OUTPUT_PIXELS": str(128 * 128),
            "FOOOCUS_URL_FETCH_TIMEOUT": "2",
        },
    )
    yield live
    live.stop(signal.SIGTERM)


def test_openapi_document_describes_every_route(server: LiveServer) -> None:
    document = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for route in (
        "/v1/engine/generate/",
        "/tasks",
        "/tasks/{task_id}",
        "/tasks/{task_id}/cancel",
        "/v1/engine/control",
        "/v1/engines/all-models",
        "/v1/engines/styles",
        "/v1/engines/presets",
        "/v1/engines/options",
    ):
        assert route in paths, route
    generate = paths["/v1/engine/generate/"]["post"]
    body = generate["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    fields = document["components"]["schemas"][body.rsplit("/", 1)[1]]["properties"]
    assert {"prompt", "performance_selection", "controlnet_image", "webhook_events"} <= set(fields)
    assert {"text/event-stream", "image/png", "application/json"} <= set(
        generate["responses"]["200"]["content"]
    )
    assert "422" in generate["responses"]


def test_swagger_ui_is_served_without_a_cdn(server: LiveServer) -> None:
    page = requests.get(f"{server.url}/docs", timeout=10)
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets
    for asset in assets:
        assert not asset.startswith(("http://", "https://", "//")), asset
        assert requests.get(f"{server.url}{asset}", timeout=10).status_code == 200, asset


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    fuzz_target: LiveServer, tmp_path: Path
) -> None:
    report = tmp_path / "schemathesis.txt"
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{fuzz_target.url}/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance,response_headers_conformance",
            "--max-examples",
            str(FUZZ_EXAMPLES),
            "--seed",
            "20261126",
            "--request-timeout",
            "30",
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report.write_text(done.stdout + done.stderr)
    # The summary line with the number of generated cases goes to the test log.
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert re.search(r"\d+ (generated|test cases)", done.stdout), done.stdout[-2000:]

"""API latency on the demo preset, measured over real HTTP against ``manage.py serve``.

Prints, for N streamed Lightning requests (one at a time, idle worker): time from POST to the
first stream event, to the first sampling step, and to the finished image (last event), as
p50/p90/max; and the same POST-to-image time for binary requests.

    .venv/bin/python bench/api.py [--runs 20] [--url http://127.0.0.1:7866]

Without ``--url`` it starts its own demo server in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.server import start_server

BODY = {"prompt": "a lighthouse at dusk", "performance_selection": "Lightning"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def stream_once(url: str) -> tuple[float, float, float]:
    start = time.perf_counter()
    first = first_step = done = 0.0
    with requests.post(
        f"{url}/v1/engine/generate/", json={**BODY, "stream_output": True}, stream=True, timeout=120
    ) as response:
        for line in response.iter_lines():
            if not line.startswith(b"data: "):
                continue
            now = time.perf_counter() - start
            event = json.loads(line[6:])
            first = first or now
            if not first_step and event["message"].startswith("Sampling step"):
                first_step = now
            if event["task_status"] == "finished":
                done = now
    return first, first_step, done


def binary_once(url: str) -> float:
    start = time.perf_counter()
    response = requests.post(f"{url}/v1/engine/generate/", json=BODY, timeout=120)
    response.raise_for_status()
    return time.perf_counter() - start


def report(name: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(
        f"{name:<34} p50 {statistics.median(ms):8.1f} ms   p90 {percentile(ms, 0.9):8.1f} ms"
        f"   max {max(ms):8.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--url", default="")
    args = parser.parse_args()
    server = None
    url = args.url
    if not url:
        from engine.demo.writer import create_demo_models

        home = Path(tempfile.mkdtemp(prefix="bench-api-"))
        create_demo_models(home / "models")
        server = start_server(home, home / "models")
        url = server.url
    try:
        stream_once(url)  # warm-up: loads the model
        binary_once(url)
        streams = [stream_once(url) for _ in range(args.runs)]
        binaries = [binary_once(url) for _ in range(args.runs)]
    finally:
        if server is not None:
            server.stop()
    print(f"demo preset, Lightning (4 steps, 64x64), {args.runs} runs each, one at a time")
    report("POST -> first stream event", [s[0] for s in streams])
    report("POST -> first sampling step", [s[1] for s in streams])
    report("POST -> finished image (stream)", [s[2] for s in streams])
    report("POST -> image bytes (binary)", binaries)


if __name__ == "__main__":
    main()

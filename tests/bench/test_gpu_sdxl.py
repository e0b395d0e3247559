"""``bench/gpu_sdxl.py --tiny`` runs the device bench's every measurement on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_bench_prints_the_whole_table(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # Fewer steps and tasks than the device run: the same code paths in a fraction of the time.
    command = [
        sys.executable,
        str(ROOT / "bench" / "gpu_sdxl.py"),
        "--tiny",
        "--speed-steps",
        "4",
        "--tasks",
        "3",
        "--out",
        str(out),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=580, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    assert table in done.stdout
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    names = [row.split(" | ")[0].removeprefix("| ") for row in rows[1:]]
    assert names == [
        "Speed 64², 4 steps, engine",
        "Speed 64², 4 steps, diffusers",
        "Lightning 64², 4 steps, engine",
        "Lightning 64², 4 steps, diffusers",
        "UNet call (CFG batch 2)",
        "Speed 64² + refiner at 0.8, engine",
        "Speed 64², capped 8 GB, auto",
        "Speed 64², capped 6 GB, auto",
        "Speed, image_number 4, one by one",
        "Speed, image_number 4, batched",
        "3 tasks one by one",
        "3 tasks batched (generate_many)",
    ]
    assert "FAILED" not in table
    # Every timed row has a positive seconds-per-image figure.
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if cells[0] != "UNet call (CFG batch 2)":
            assert float(cells[1]) > 0
    assert "GFLOP/call" in table

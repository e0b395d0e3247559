"""The image grid is written by the engine's one output encoder, in the format asked for."""

from __future__ import annotations

import io

import pytest
import requests
from PIL import Image

from tests.server import LiveServer

MAGIC = {
    "png": lambda data: data[:8] == b"\x89PNG\r\n\x1a\n",
    "jpeg": lambda data: data[:3] == b"\xff\xd8\xff",
    "webp": lambda data: data[:4] == b"RIFF" and data[8:12] == b"WEBP",
}


@pytest.mark.parametrize(("output_format", "pil_format"), [("webp", "WEBP"), ("jpeg", "JPEG")])
def test_the_grid_file_is_in_the_output_format(
    server: LiveServer, output_format: str, pil_format: str
) -> None:
    body = {
        "performance_selection": "Lightning",
        "image_number": 2,
        "image_seed": 5,
        "generate_image_grid": True,
        "output_format": output_format,
    }
    response = requests.post(
        f"{server.url}/v1/engine/generate/",
        json=body,
        headers={"Accept": "application/json"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    task = response.json()
    assert task["task_status"] == "finished"
    assert len(task["result"]) == 3  # two images, then the grid
    assert task["seeds"][-1] == -1
    paths = [server.outputs / url.split("/outputs/", 1)[1] for url in task["result"]]
    assert all(path.suffix == f".{output_format}" for path in paths)
    grid_bytes = paths[-1].read_bytes()
    assert MAGIC[output_format](grid_bytes), grid_bytes[:16]
    with Image.open(io.BytesIO(grid_bytes)) as grid, Image.open(paths[0]) as first:
        assert grid.format == pil_format
        # Two images side by side: the near-square wall of a batch of two.
        assert grid.size == (2 * first.width, first.height)

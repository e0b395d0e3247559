"""ModelManager.require: missing files, bad names, downloads (file:// and a local HTTP server)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig
from engine.models.manager import ModelManager
from engine.types import EngineInputError, ModelFileMissingError

PAYLOAD = bytes(range(256)) * 8192  # 2 MiB: several read chunks, several progress lines


def manager(models_dir: Path, downloads: dict[str, str], allow: bool = True) -> ModelManager:
    config = EngineConfig(models_dir, models_dir, downloads=downloads, allow_downloads=allow)
    return ModelManager(config, torch.device("cpu"), torch.float32)


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 serving ``tmp_path/served``; yields (base URL, folder)."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_missing_file_without_url_names_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFileMissingError) as info:
        manager(tmp_path, {}).require("loras", "sdxl_lcm_lora.safetensors")
    error = info.value
    assert (error.filename, error.folder) == ("sdxl_lcm_lora.safetensors", "loras")
    assert "sdxl_lcm_lora.safetensors" in str(error)
    assert str(tmp_path / "loras") in str(error)


def test_missing_file_with_downloads_off_names_the_url(tmp_path: Path) -> None:
    url = "https://example.invalid/sdxl_lcm_lora.safetensors"
    with pytest.raises(ModelFileMissingError, match=r"example\.invalid"):
        manager(tmp_path, {"loras/sdxl_lcm_lora.safetensors": url}, allow=False).require(
            "loras", "sdxl_lcm_lora.safetensors"
        )


@pytest.mark.parametrize(
    "name", ["../secret.safetensors", "a/b.safetensors", "..", "", "a\\b", ".hidden"]
)
def test_names_with_paths_are_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(EngineInputError) as info:
        manager(tmp_path, {}).require("checkpoints", name)
    assert info.value.field == "base_model_name"


def test_sidecar_config_folder_is_not_a_model(demo_models_dir: Path) -> None:
    with pytest.raises(EngineInputError, match="not a model folder"):
        manager(demo_models_dir, {}).require("checkpoints", "fooocus_demo_tiny.config")


def test_download_from_file_url(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD)
    models = tmp_path / "models"
    path = manager(models, {"vae/x.safetensors": source.as_uri()}).require("vae", "x.safetensors")
    assert path == models / "vae" / "x.safetensors"
    assert path.read_bytes() == PAYLOAD
    assert leftovers(models / "vae") == ["x.safetensors"]


def test_download_over_http_reports_progress(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base_url, served = http_root
    (served / "lora.safetensors").write_bytes(PAYLOAD)
    models = tmp_path / "models"
    messages: list[str] = []
    mm = manager(models, {"loras/lora.safetensors": f"{base_url}/lora.safetensors"})
    path = mm.require("loras", "lora.safetensors", on_message=messages.append)
    assert path.read_bytes() == PAYLOAD
    progress = [m for m in messages if m.startswith("Downloading lora.safetensors: ")]
    percents = [int(m.split(": ")[1].split("%")[0]) for m in progress]
    assert len(percents) >= 3
    assert percents == sorted(percents)
    assert percents[-1] == 100
    assert "(2.1/2.1 MB)" in progress[-1]
    assert messages[-1] == "Downloaded lora.safetensors."

    assert mm.require("loras", "lora.safetensors") == path  # present now: no second download


def test_failed_download_leaves_nothing(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base_url, _ = http_root
    models = tmp_path / "models"
    mm = manager(models, {"loras/gone.safetensors": f"{base_url}/gone.safetensors"})
    with pytest.raises(ModelFileMissingError, match=r"gone\.safetensors") as info:
        mm.require("loras", "gone.safetensors")
    assert "404" in str(info.value)
    assert leftovers(models / "loras") == []


def test_cut_download_is_not_kept(tmp_path: Path) -> None:
    class Truncating(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Truncating)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/x"
        models = tmp_path / "models"
        with pytest.raises(ModelFileMissingError):
            manager(models, {"checkpoints/x.safetensors": url}).require(
                "checkpoints", "x.safetensors"
            )
        assert leftovers(models / "checkpoints") == []
    finally:
        server.shutdown()
        server.server_close()

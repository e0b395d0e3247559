"""Downloads: ModelManager.require's missing files and bad names, and the downloader itself over a
local HTTP server: progress, resume after a cut, SHA-256 verification, one process at a time."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig
from engine.models import downloads
from engine.models.downloads import DownloadError, DownloadVerificationError, download_file
from engine.models.manager import ModelManager
from engine.types import EngineInputError, ModelFileMissingError
from tests.fileserver import FileServer, serve_files

PAYLOAD = bytes(range(256)) * 8192  # 2 MiB: several read chunks, several progress lines
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries follow each other at once (the wait between them is not what is tested)."""
    monkeypatch.setattr(downloads, "RETRY_BACKOFF_S", 0.0)


def manager(
    models_dir: Path,
    files: dict[str, str],
    allow: bool = True,
    checksums: dict[str, str] | None = None,
) -> ModelManager:
    config = EngineConfig(
        models_dir, models_dir, downloads=files, checksums=checksums or {}, allow_downloads=allow
    )
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
    assert messages[-1] == (
        "Downloaded lora.safetensors (2.1 MB, not verified: the preset gives no SHA-256)."
    )

    assert mm.require("loras", "lora.safetensors") == path  # present now: no second download


def test_failed_download_leaves_nothing(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base_url, _ = http_root
    models = tmp_path / "models"
    mm = manager(models, {"loras/gone.safetensors": f"{base_url}/gone.safetensors"})
    with pytest.raises(ModelFileMissingError, match=r"gone\.safetensors") as info:
        mm.require("loras", "gone.safetensors")
    assert "404" in str(info.value)
    # Only the lock file stays after a failure (removing it then could let two processes in).
    assert leftovers(models / "loras") == ["gone.safetensors.lock"]


def test_cut_download_keeps_only_the_part_file(tmp_path: Path) -> None:
    """A server that cuts every time and ignores ranges: the final name never appears; the
    error names the file and the URL; the bytes kept are a prefix of the file."""
    state = FileServer({"x": PAYLOAD}, cut_after=300_000, cuts=99, honor_range=False)
    with serve_files(state) as srv:
        models = tmp_path / "models"
        mm = manager(models, {"checkpoints/x.safetensors": srv.url("x")})
        with pytest.raises(ModelFileMissingError, match=r"x\.safetensors") as info:
            mm.require("checkpoints", "x.safetensors")
        assert srv.url("x") in str(info.value)
        assert len(srv.requests) > 2
    assert not (models / "checkpoints" / "x.safetensors").exists()
    kept = (models / "checkpoints" / "x.safetensors.part").read_bytes()
    assert 0 < len(kept) <= 300_000
    assert PAYLOAD.startswith(kept)


def test_a_cut_connection_is_resumed_with_a_range_request(tmp_path: Path) -> None:
    cut = 700_001
    with serve_files(FileServer({"m.bin": PAYLOAD}, cut_after=cut)) as srv:
        target = tmp_path / "m.bin"
        messages: list[str] = []
        download_file(srv.url("m.bin"), target, messages.append, sha256=PAYLOAD_SHA256)
        assert target.read_bytes() == PAYLOAD
        assert len(srv.requests) == 2
        assert srv.requests[0] == ("m.bin", None)
        name, range_header = srv.requests[1]
        assert name == "m.bin"
        assert range_header is not None
        resumed_at = int(range_header.removeprefix("bytes=").removesuffix("-"))
        # What arrived before the cut is kept (up to the last whole chunk read) and not re-sent.
        assert 0 < resumed_at <= cut
        assert srv.sent == len(PAYLOAD) + (cut - resumed_at)
    assert any(m.startswith("Connection lost while downloading m.bin") for m in messages)
    assert messages[-1] == "Downloaded m.bin (2.1 MB, SHA-256 verified)."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]  # no .part, no .lock left


def test_the_next_call_resumes_where_an_earlier_one_stopped(tmp_path: Path) -> None:
    """A process that died mid-file left its .part: the next call asks only for the rest."""
    target = tmp_path / "m.bin"
    (tmp_path / "m.bin.part").write_bytes(PAYLOAD[:500_000])
    with serve_files(FileServer({"m.bin": PAYLOAD})) as srv:
        messages: list[str] = []
        download_file(srv.url("m.bin"), target, messages.append, sha256=PAYLOAD_SHA256)
        assert srv.requests == [("m.bin", "bytes=500000-")]
        assert srv.sent == len(PAYLOAD) - 500_000
    assert messages[0].startswith("Resuming m.bin from http://127.0.0.1:")
    assert target.read_bytes() == PAYLOAD


def test_a_failed_call_keeps_the_part_for_the_next_one(tmp_path: Path) -> None:
    target = tmp_path / "m.bin"
    state = FileServer({"m.bin": PAYLOAD}, cut_after=300_000, cuts=99, honor_range=False)
    with serve_files(state) as srv, pytest.raises(DownloadError, match="the next try resumes"):
        download_file(srv.url("m.bin"), target, attempts=2)
    assert (tmp_path / "m.bin.part").exists()
    assert not target.exists()


def test_a_server_without_ranges_makes_the_download_start_over(tmp_path: Path) -> None:
    target = tmp_path / "m.bin"
    (tmp_path / "m.bin.part").write_bytes(b"stale bytes from another file")
    with serve_files(FileServer({"m.bin": PAYLOAD}, honor_range=False)) as srv:
        download_file(srv.url("m.bin"), target, sha256=PAYLOAD_SHA256)
        assert srv.requests == [("m.bin", "bytes=29-"), ("m.bin", None)]
    assert target.read_bytes() == PAYLOAD


def test_a_complete_part_file_is_only_verified(tmp_path: Path) -> None:
    """The server answers 416 to a range past the end: the .part already holds the file."""
    target = tmp_path / "m.bin"
    (tmp_path / "m.bin.part").write_bytes(PAYLOAD)
    with serve_files(FileServer({"m.bin": PAYLOAD})) as srv:
        download_file(srv.url("m.bin"), target, sha256=PAYLOAD_SHA256)
        assert srv.sent == 0
    assert target.read_bytes() == PAYLOAD


def test_a_checksum_mismatch_removes_the_file_and_names_file_and_url(tmp_path: Path) -> None:
    wrong = hashlib.sha256(b"another file").hexdigest()
    with serve_files(FileServer({"lora.safetensors": PAYLOAD})) as srv:
        url = srv.url("lora.safetensors")
        with pytest.raises(DownloadVerificationError) as info:
            download_file(url, tmp_path / "lora.safetensors", sha256=wrong)
        message = str(info.value)
        for part in ("lora.safetensors", url, PAYLOAD_SHA256, wrong):
            assert part in message
        assert leftovers(tmp_path) == ["lora.safetensors.lock"]  # no file, no .part

        # Through the model manager: the task's error names the file and the URL too.
        models = tmp_path / "models"
        mm = manager(
            models,
            {"loras/lora.safetensors": url},
            checksums={"loras/lora.safetensors": wrong},
        )
        with pytest.raises(ModelFileMissingError, match="failed verification") as info2:
            mm.require("loras", "lora.safetensors")
        assert url in str(info2.value)
        assert not (models / "loras" / "lora.safetensors").exists()
        assert not (models / "loras" / "lora.safetensors.part").exists()

        good = manager(
            models,
            {"loras/lora.safetensors": url},
            checksums={"loras/lora.safetensors": PAYLOAD_SHA256},
        )
        assert good.require("loras", "lora.safetensors").read_bytes() == PAYLOAD


def test_a_short_body_without_a_cut_is_not_accepted(tmp_path: Path) -> None:
    """Fewer bytes than Content-Length, every time: the call fails, nothing has the final name."""
    state = FileServer({"m.bin": PAYLOAD}, cut_after=10, cuts=99, honor_range=False)
    with serve_files(state) as srv, pytest.raises(DownloadError, match=r"m\.bin"):
        download_file(srv.url("m.bin"), tmp_path / "m.bin", attempts=3)
    assert not (tmp_path / "m.bin").exists()


WAITER = """
import sys
from pathlib import Path
from engine.models.downloads import download_file
download_file(sys.argv[1], Path(sys.argv[2]), lambda m: print(m, flush=True), sha256=sys.argv[3])
print("DONE", flush=True)
"""


def test_two_processes_asking_for_one_file_download_it_once(tmp_path: Path) -> None:
    """Process A holds the lock mid-file (the server holds the response halfway); process B
    reports that it waits, and once A is done finds the file without fetching it."""
    target = tmp_path / "models" / "big.safetensors"
    state = FileServer({"big.safetensors": PAYLOAD}, pause_at=len(PAYLOAD) // 2)
    with serve_files(state) as srv:
        url = srv.url("big.safetensors")
        command = [sys.executable, "-c", WAITER, url, str(target), PAYLOAD_SHA256]
        first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert state.paused.wait(60), "the first process never started downloading"
        second = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert second.stdout is not None
        waiting = second.stdout.readline()
        assert waiting.startswith("Waiting: another process is downloading big.safetensors")
        state.gate.set()  # let A finish
        first_out, _ = first.communicate(timeout=60)
        second_out, _ = second.communicate(timeout=60)
        assert (first.returncode, second.returncode) == (0, 0)
        assert srv.requests == [("big.safetensors", None)]  # one download, by A
    assert "Downloaded big.safetensors (2.1 MB, SHA-256 verified)." in first_out
    assert "big.safetensors was downloaded by another process." in second_out
    assert target.read_bytes() == PAYLOAD
    assert leftovers(target.parent) == ["big.safetensors"]


def test_a_waiter_with_a_deadline_gives_up_naming_the_lock(tmp_path: Path) -> None:
    from filelock import FileLock

    target = tmp_path / "x.bin"
    match = r"waiting for another process.*x\.bin"
    with FileLock(downloads.lock_path(target)), pytest.raises(DownloadError, match=match):
        download_file("http://127.0.0.1:9/x.bin", target, wait_timeout=0.2)


def test_hub_urls_follow_hf_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://huggingface.co/lllyasviel/misc/resolve/main/x.bin"
    assert downloads.mirrored(url) == url
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    assert downloads.mirrored(url) == "https://hf-mirror.example/lllyasviel/misc/resolve/main/x.bin"
    assert downloads.mirrored("https://example.com/x.bin") == "https://example.com/x.bin"


def test_shipped_presets_give_well_formed_hashes_for_the_big_files() -> None:
    from engine.presets import all_checksums, all_downloads

    presets = ROOT / "presets"
    checksums, urls = all_checksums(presets), all_downloads(presets)
    assert set(checksums) <= set(urls)
    for key, digest in checksums.items():
        assert len(digest) == 64, key
        assert set(digest) <= set("0123456789abcdef"), key
    # Fooocus's metadata hash (sha256[:10]) of its default model and offset LoRA.
    juggernaut = checksums["checkpoints/juggernautXL_v8Rundiffusion.safetensors"]
    assert juggernaut.startswith("aeb7e9e689")
    assert checksums["loras/sd_xl_offset_example-lora_1.0.safetensors"].startswith("4852686128")
    for key in ("checkpoints/", "loras/", "inpaint/", "styles/"):
        assert any(k.startswith(key) for k in checksums), key

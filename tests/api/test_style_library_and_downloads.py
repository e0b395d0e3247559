"""The commands around the style library and model downloads, and the web side's style list.

``import_styles`` copies a folder in Fooocus's format (written here, with texts of our own);
``download_models`` fetches a preset's files from a local HTTP server, verified by SHA-256; the
catalog (what web processes validate against and list at ``/v1/engines/styles``) fetches
Fooocus's library on first use and still refuses a name that exists nowhere. No torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from engine.config import EngineConfig
from engine.prompts.styles import FOOOCUS_STYLE_FILES, STARTER_STYLE_FILES
from tests.engine.prompts.test_styles import FAKE_FOOOCUS, FAKE_ORDER, write_fooocus_files
from tests.fileserver import FileServer, serve_files

ROOT = Path(__file__).resolve().parents[2]
MODEL = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture
def folders(tmp_path: Path, settings: Any) -> dict[str, Path]:
    styles = tmp_path / "styles"
    styles.mkdir()
    for name in STARTER_STYLE_FILES:
        shutil.copyfile(ROOT / "styles" / name, styles / name)
    presets = tmp_path / "presets"
    presets.mkdir()
    shutil.copyfile(ROOT / "presets" / "default.json", presets / "default.json")
    settings.FOOOCUS_STYLES_DIR = styles
    settings.FOOOCUS_PRESETS_DIR = presets
    settings.FOOOCUS_MODELS_DIR = tmp_path / "models"
    settings.FOOOCUS_PRESET = "default"
    return {"styles": styles, "presets": presets, "models": tmp_path / "models"}


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_import_styles_copies_a_fooocus_install(tmp_path: Path, folders: dict[str, Path]) -> None:
    install = tmp_path / "Fooocus"
    write_fooocus_files(install / "sdxl_styles")
    (install / "sdxl_styles" / "my_styles.json").write_text(
        json.dumps([{"name": "my-own", "prompt": "{prompt}, mine"}])
    )
    output = run("import_styles", str(install))
    for name in (*FOOOCUS_STYLE_FILES, "my_styles.json"):
        copied = (folders["styles"] / name).read_bytes()
        assert copied == (install / "sdxl_styles" / name).read_bytes()
    assert f"Imported 7 files ({len(FAKE_ORDER) + 2} styles)" in output
    # Not Fooocus 2.5.5's bytes (the default preset knows their SHA-256): imported, with a note.
    assert "differs from Fooocus 2.5.5's file" in output

    from engine.prompts.styles import StyleLibrary

    names = StyleLibrary.from_folder(folders["styles"]).names()
    assert names == ["Fooocus V2", "Random Style", "My Own", *FAKE_ORDER]


def test_import_styles_refuses_a_broken_folder_and_copies_nothing(
    tmp_path: Path, folders: dict[str, Path]
) -> None:
    source = tmp_path / "sdxl_styles"
    write_fooocus_files(source)
    (source / "zz_broken.json").write_text('{"name": "not a list"}')
    with pytest.raises(CommandError, match=r"zz_broken\.json"):
        run("import_styles", str(source))
    assert sorted(p.name for p in folders["styles"].iterdir()) == sorted(STARTER_STYLE_FILES)
    with pytest.raises(CommandError, match="not a folder"):
        run("import_styles", str(tmp_path / "nowhere"))


def write_preset(folders: dict[str, Path], base_url: str, *, sha256: str) -> None:
    styles = {
        name: {
            "url": f"{base_url}/{name}",
            "sha256": hashlib.sha256(json.dumps(FAKE_FOOOCUS[name]).encode()).hexdigest(),
        }
        for name in FOOOCUS_STYLE_FILES
    }
    preset = {
        "default_model": "tiny.safetensors",
        "checkpoint_downloads": {
            "tiny.safetensors": {"url": f"{base_url}/tiny.safetensors", "sha256": sha256}
        },
        "lora_downloads": {"extra.safetensors": f"{base_url}/extra.safetensors"},
        "style_downloads": styles,
    }
    (folders["presets"] / "default.json").unlink()
    (folders["presets"] / "mine.json").write_text(json.dumps(preset))


def served(base: dict[str, bytes] | None = None) -> FileServer:
    files = {name: json.dumps(FAKE_FOOOCUS[name]).encode() for name in FOOOCUS_STYLE_FILES}
    files.update({"tiny.safetensors": MODEL, "extra.safetensors": MODEL[:1000]})
    files.update(base or {})
    return FileServer(files, cut_after=300_000)  # the first full response is cut: resumed


def test_download_models_fetches_what_a_preset_needs(folders: dict[str, Path]) -> None:
    with serve_files(served()) as srv:
        write_preset(folders, srv.base_url, sha256=hashlib.sha256(MODEL).hexdigest())
        output = run("download_models", "--preset", "mine")
        assert "checkpoints/tiny.safetensors: downloaded, verified" in output
        assert "loras/extra.safetensors: downloaded, size-checked only (no SHA-256)" in output
        assert "mine: 8 downloaded, 0 already present, 0 failed" in output
        assert any(r is not None for _, r in srv.requests)  # the cut was resumed with a range
        again = run("download_models", "--all")
        assert "mine: 0 downloaded, 8 already present, 0 failed" in again
    assert (folders["models"] / "checkpoints" / "tiny.safetensors").read_bytes() == MODEL
    for name in FOOOCUS_STYLE_FILES:
        assert (folders["styles"] / name).is_file()


def test_download_models_fails_naming_the_file_that_failed_verification(
    folders: dict[str, Path],
) -> None:
    with serve_files(served()) as srv:
        write_preset(folders, srv.base_url, sha256=hashlib.sha256(b"other").hexdigest())
        with pytest.raises(CommandError) as info:
            run("download_models", "--preset", "mine")
        message = str(info.value)
        assert "checkpoints/tiny.safetensors" in message
        assert srv.url("tiny.safetensors") in message
        assert "failed verification" in message
    assert not (folders["models"] / "checkpoints" / "tiny.safetensors").exists()
    assert (folders["models"] / "loras" / "extra.safetensors").exists()  # the others went on
    with pytest.raises(CommandError, match="unknown preset"):
        run("download_models", "--preset", "nope")


def test_the_catalog_fetches_the_library_on_first_use(tmp_path: Path) -> None:
    from generation.catalog import Catalog

    files = {name: json.dumps(FAKE_FOOOCUS[name]).encode() for name in FOOOCUS_STYLE_FILES}
    styles = tmp_path / "styles"
    styles.mkdir()
    for name in STARTER_STYLE_FILES:
        shutil.copyfile(ROOT / "styles" / name, styles / name)
    with serve_files(FileServer(files)) as srv:
        config = EngineConfig(
            models_dir=tmp_path / "models",
            styles_dir=styles,
            downloads={f"styles/{n}": srv.url(n) for n in files},
            checksums={f"styles/{n}": hashlib.sha256(b).hexdigest() for n, b in files.items()},
        )
        catalog = Catalog(config, tmp_path / "presets")
        assert catalog.styles() == ["Fooocus V2", "Random Style", *FAKE_ORDER]
        assert "Not A Style" not in catalog.styles()


def test_the_commands_do_not_import_torch() -> None:
    code = (
        "import sys, django; django.setup();"
        "import generation.management.commands.download_models,"
        " generation.management.commands.import_styles, engine.prompts.styles;"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "fooocus_site.settings"},
        check=True,
    )
    assert result.stdout.strip() == "False"


@pytest.mark.e2e
def test_a_fresh_server_fetches_the_library_for_a_request_that_names_a_fooocus_style(
    tmp_path: Path, demo_models: Path
) -> None:
    """Over real HTTP, downloads on: a request naming a style that is only in Fooocus's library
    is accepted and runs (the web process fetched the library from the preset's URLs first);
    the style list then holds Fooocus's names; a name that exists nowhere is still a 422."""
    import signal

    import requests

    from tests.server import start_server

    files = {name: json.dumps(FAKE_FOOOCUS[name]).encode() for name in FOOOCUS_STYLE_FILES}
    styles = tmp_path / "styles"
    styles.mkdir()
    for name in STARTER_STYLE_FILES:
        shutil.copyfile(ROOT / "styles" / name, styles / name)
    presets = tmp_path / "presets"
    presets.mkdir()
    shutil.copyfile(ROOT / "presets" / "demo.json", presets / "demo.json")
    with serve_files(FileServer(files)) as srv:
        library = {
            n: {"url": srv.url(n), "sha256": hashlib.sha256(b).hexdigest()}
            for n, b in files.items()
        }
        (presets / "styles.json").write_text(json.dumps({"style_downloads": library}))
        live = start_server(
            tmp_path / "home",
            demo_models,
            extra_env={
                "FOOOCUS_ALLOW_DOWNLOADS": "1",
                "FOOOCUS_STYLES_DIR": str(styles),
                "FOOOCUS_PRESETS_DIR": str(presets),
            },
        )
        try:
            body = {
                "prompt": "a lighthouse",
                "performance_selection": "Lightning",
                "style_selections": ["Fooocus V2", "Mk Chromolithography"],
            }
            accepted = requests.post(
                f"{live.url}/v1/engine/generate/",
                json=body,
                headers={"Accept": "application/json"},
                timeout=300,
            )
            assert accepted.status_code == 200, accepted.text
            assert sorted(n for n, _ in srv.requests) == sorted(FOOOCUS_STYLE_FILES)
            listed = requests.get(f"{live.url}/v1/engines/styles", timeout=10).json()
            assert listed == ["Fooocus V2", "Random Style", *FAKE_ORDER]
            refused = requests.post(
                f"{live.url}/v1/engine/generate/",
                json={**body, "style_selections": ["Not A Style Anywhere"]},
                timeout=60,
            )
            assert refused.status_code == 422
            assert "style_selections" in refused.text
        finally:
            live.stop(signal.SIGTERM)

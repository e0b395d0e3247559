"""The tool routes keep web processes free of the engine's heavy packages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_tool_routes_import_no_torch_onnxruntime_or_transformers() -> None:
    code = (
        "import django; django.setup(); "
        "import fooocus_site.asgi, generation.tools.consumers, generation.tools.submit, "
        "generation.tools.runner, generation.params; import sys; "
        "heavy = ('torch', 'onnxruntime', 'transformers', 'onnx'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "fooocus_site.settings"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"

"""The check before load (engine/check.py) is plain Python and checks like the engine does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine import EngineConfig, EngineInputError, EngineRequest, FeatureNotSupportedError
from engine.check import RequestChecker

ROOT = Path(__file__).resolve().parents[2]


def test_the_check_and_the_catalog_modules_import_no_torch() -> None:
    code = (
        "import sys\n"
        "import engine.check, engine.config, engine.options, engine.presets\n"
        "import engine.prompts.styles\n"
        "import engine.plan, engine.masks, engine.types\n"
        "heavy = ('torch', 'diffusers', 'transformers', 'django')\n"
        "heavy = [name for name in heavy if name in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.fixture
def checker(tmp_path: Path) -> RequestChecker:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "base.safetensors").write_bytes(b"")
    (tmp_path / "checkpoints" / "refiner.safetensors").write_bytes(b"")
    return RequestChecker(EngineConfig(models_dir=tmp_path, styles_dir=tmp_path / "styles"))


def test_a_plain_request_passes_and_returns_its_plan(checker: RequestChecker) -> None:
    plan = checker.check(EngineRequest(base_model_name="base.safetensors", prompt="a cat"))
    assert (plan.sampler, plan.scheduler, plan.steps) == ("dpmpp_2m_sde_gpu", "karras", 30)


@pytest.mark.parametrize(
    ("changes", "field", "error"),
    [
        ({"base_model_name": "missing.safetensors"}, "base_model_name", EngineInputError),
        ({"width": 100}, "width", EngineInputError),
        ({"sampler_name": "made_up"}, "sampler_name", EngineInputError),
        ({"scheduler_name": "turbo"}, "scheduler_name", EngineInputError),  # 30 steps > 10
        ({"refiner_swap_method": "other"}, "refiner_swap_method", EngineInputError),
        (
            {"refiner_model_name": "refiner.safetensors", "refiner_swap_method": "vae"},
            "refiner_swap_method",
            FeatureNotSupportedError,
        ),
        ({"uov_method": "Vary (Subtle)"}, "uov_input_image", EngineInputError),
        ({"black_out_nsfw": True}, "black_out_nsfw", EngineInputError),  # no safety file
    ],
)
def test_refusals_name_the_field(
    checker: RequestChecker, changes: dict[str, object], field: str, error: type[Exception]
) -> None:
    body: dict[str, object] = {"base_model_name": "base.safetensors", **changes}
    request = EngineRequest(**body)  # type: ignore[arg-type]
    with pytest.raises(error) as caught:
        checker.check(request)
    assert isinstance(caught.value, EngineInputError)
    assert caught.value.field == field

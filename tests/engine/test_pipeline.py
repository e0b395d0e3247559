"""The Engine end to end on the tiny SDXL model: determinism, events, stop/skip, presets, checks."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine import (
    Engine,
    EngineConfig,
    EngineEvent,
    EngineRequest,
    LoraSpec,
    StopAction,
    StopPoll,
)
from engine.models.components import SDXLComponents, build_tiny_sdxl
from engine.types import EngineInputError, FeatureNotSupportedError, ImagePromptSpec

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny.safetensors"
REFINER = "refiner.safetensors"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FakeManager:
    """Serves one in-memory tiny model; records what was asked of it."""

    def __init__(self, components: SDXLComponents, root: Path) -> None:
        self.components = components
        self.root = root
        self.refiner: SDXLComponents | None = None
        self.loads: list[tuple[str, str, tuple[tuple[str, float], ...]]] = []

    def require(self, folder: str, filename: str, on_message: object = None) -> Path:
        path = self.root / folder / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(filename.encode())
        return path

    def list_files(self, folder: str) -> list[str]:
        return {
            "checkpoints": [MODEL, REFINER],
            "loras": ["user.safetensors", "lightning.safetensors"],
        }.get(folder, [])

    def load_base(
        self,
        name: str,
        *,
        vae_name: str = "Default (model)",
        loras: Sequence[tuple[str, float]] = (),
        on_message: object = None,
    ) -> SDXLComponents:
        self.loads.append((name, vae_name, tuple(loras)))
        return self.components

    def load_refiner(
        self, name: str, *, loras: Sequence[tuple[str, float]] = (), on_message: object = None
    ) -> SDXLComponents:
        self.loads.append((name, "refiner", tuple(loras)))
        return self.refiner or self.components


@pytest.fixture(scope="module")
def tiny() -> SDXLComponents:
    return build_tiny_sdxl(0, name=MODEL)


@pytest.fixture
def manager(tiny: SDXLComponents, tmp_path: Path) -> FakeManager:
    return FakeManager(tiny, tmp_path)


@pytest.fixture
def engine(manager: FakeManager, tmp_path: Path) -> Engine:
    config = EngineConfig(models_dir=tmp_path, styles_dir=ROOT / "styles", device="cpu")
    return Engine(config, manager=manager)


BASE = EngineRequest(
    base_model_name=MODEL,
    prompt="a cat\nsitting on a mat",
    negative_prompt="blurry",
    style_selections=("Fooocus Enhance", "Fooocus Sharp"),
    width=64,
    height=64,
    image_number=2,
    seed=11,
    overwrite_step=3,
)


def _pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(__import__("numpy").asarray(image, dtype="float32"))


def test_same_seed_same_image_other_seed_other_image(engine: Engine) -> None:
    first = engine.generate(replace(BASE, image_number=1))
    again = engine.generate(replace(BASE, image_number=1))
    other = engine.generate(replace(BASE, image_number=1, seed=12))
    assert first.images[0].image.size == (64, 64)
    assert first.images[0].image.mode == "RGB"
    assert torch.equal(_pixels(first.images[0].image), _pixels(again.images[0].image))
    assert not torch.equal(_pixels(first.images[0].image), _pixels(other.images[0].image))


def test_events_progress_and_seeds(engine: Engine) -> None:
    events: list[EngineEvent] = []
    result = engine.generate(BASE, on_event=events.append)
    steps = [e for e in events if e.message.startswith("Sampling step")]
    assert len(steps) == 3 * 2
    assert steps[0].message == "Sampling step 1/3, image 1/2 ..."
    assert all(e.preview is not None and e.preview.mode == "RGB" for e in steps)
    assert events[0].message == "Loading models ..."
    assert any(e.message == "Preparing task 2/2 ..." for e in events)
    progress = [e.progress for e in events]
    assert progress == sorted(progress)
    assert progress[-1] == 99
    image_events = [e for e in events if e.kind == "image"]
    assert [e.image.index for e in image_events if e.image] == [0, 1]
    assert [img.seed for img in result.images] == [11, 12]
    meta = result.images[1].metadata
    assert meta["seed"] == "12"
    assert meta["resolution"] == "(64, 64)"
    assert meta["steps"] == 3
    assert meta["prompt"] == "a cat\nsitting on a mat"
    full_prompt = meta["full_prompt"]
    assert isinstance(full_prompt, list)
    assert full_prompt[0].startswith("a cat, crisp detail")  # Fooocus Sharp's template
    assert full_prompt[-1] == "sitting on a mat"
    assert '"seed": "12"' in str(meta["metadata_text"])
    assert not result.stopped

    quiet: list[EngineEvent] = []
    same = engine.generate(
        replace(BASE, disable_preview=True, disable_seed_increment=True), on_event=quiet.append
    )
    assert all(e.preview is None for e in quiet)
    assert [img.seed for img in same.images] == [11, 11]


def test_stop_returns_early_and_skip_drops_one_image(engine: Engine) -> None:
    def poller(trigger_at: int, action: StopAction) -> StopPoll:
        calls = {"n": 0}

        def poll() -> StopAction | None:
            calls["n"] += 1
            return action if calls["n"] == trigger_at else None

        return poll

    # Polls: before image 1, after its 3 steps (1+3), before image 2 (5), after its first step (6).
    stopped = engine.generate(replace(BASE, image_number=3), should_stop=poller(6, "stop"))
    assert stopped.stopped
    assert [i.index for i in stopped.images] == [0]
    skipped = engine.generate(replace(BASE, image_number=3), should_stop=poller(6, "skip"))
    assert not skipped.stopped
    assert [i.index for i in skipped.images] == [0, 2]


def test_unet_passes_per_step(engine: Engine, tiny: SDXLComponents) -> None:
    batches: list[int] = []
    handle = tiny.unet.register_forward_hook(
        lambda module, args, output: batches.append(args[0].shape[0])
    )
    try:
        engine.generate(replace(BASE, image_number=1, guidance_scale=1.0, sampler_name="euler"))
        assert batches == [1, 1, 1]
        batches.clear()
        engine.generate(replace(BASE, image_number=1, guidance_scale=4.0, sampler_name="euler"))
        assert batches == [2, 2, 2]  # positive and negative in one batch
    finally:
        handle.remove()


def test_lightning_forces_its_settings_and_appends_its_lora(
    engine: Engine, manager: FakeManager
) -> None:
    request = replace(
        BASE,
        image_number=1,
        overwrite_step=-1,
        performance_selection="Lightning",
        performance_lora_name="lightning.safetensors",
        loras=(
            LoraSpec("user.safetensors", 0.3),
            LoraSpec("None", 1.0),
            LoraSpec("user.safetensors", 0.5, enabled=False),
        ),
    )
    events: list[EngineEvent] = []
    result = engine.generate(request, on_event=events.append)
    assert manager.loads[-1][2] == (("user.safetensors", 0.3), ("lightning.safetensors", 1.0))
    assert sum(e.message.startswith("Sampling step") for e in events) == 4
    meta = result.images[0].metadata
    assert (meta["sampler"], meta["scheduler"], meta["guidance_scale"], meta["sharpness"]) == (
        "euler",
        "sgm_uniform",
        1.0,
        0.0,
    )
    assert meta["adm_guidance"] == "(1.0, 1.0, 0.0)"
    assert meta["adaptive_cfg"] == 1.0
    assert meta["lora_combined_2"] == "lightning.safetensors : 1.0"


@pytest.mark.parametrize(
    ("performance", "steps"), [("Extreme Speed", 8), ("Hyper-SD", 4), ("Quality", 60)]
)
def test_performance_steps(engine: Engine, performance: str, steps: int) -> None:
    request = replace(
        BASE,
        image_number=1,
        overwrite_step=-1,
        performance_selection=performance,
        performance_lora_name="lightning.safetensors",
        width=32,
        height=32,
    )
    if performance == "Quality":
        request = replace(request, overwrite_step=2)  # overwrite_step wins
        steps = 2
    events: list[EngineEvent] = []
    engine.generate(request, on_event=events.append)
    assert sum(e.message.startswith("Sampling step") for e in events) == steps


@pytest.mark.parametrize(
    ("changes", "field", "unsupported"),
    [
        ({"sampler_name": "made_up"}, "sampler_name", False),
        ({"style_selections": ("Fooocus V2",)}, "style_selections", False),  # no model files
        ({"style_selections": ("Nope",)}, "style_selections", False),
        ({"refiner_model_name": "other.safetensors"}, "refiner_model_name", False),
        (
            {"refiner_model_name": "refiner.safetensors", "refiner_swap_method": "vae"},
            "refiner_swap_method",
            True,
        ),
        ({"uov_method": "Vary (Subtle)"}, "uov_input_image", False),  # no image
        ({"uov_method": "Vary (Sideways)"}, "uov_method", False),
        (
            {
                "uov_method": "Upscale (Custom)",
                "uov_input_image": Image.new("RGB", (8, 8)),
                "upscale_multiple": 6.0,
            },
            "upscale_multiple",
            False,
        ),
        ({"inpaint_input_image": Image.new("RGB", (8, 8))}, "inpaint_mask_image", False),
        ({"outpaint_selections": ("Left",)}, "inpaint_input_image", False),
        (
            {"image_prompts": (ImagePromptSpec(Image.new("RGB", (8, 8)), "PyraCanny"),)},
            "controlnet_image",
            False,
        ),  # the fake manager has no ControlNet file
        ({"black_out_nsfw": True}, "black_out_nsfw", False),  # no checker file
        ({"width": 60}, "width", False),
        ({"height": 0}, "height", False),
        ({"base_model_name": "missing.safetensors"}, "base_model_name", False),
        ({"loras": (LoraSpec("missing.safetensors"),)}, "loras", False),
        ({"vae_name": "missing_vae.safetensors"}, "vae_name", False),
        ({"performance_selection": "Turbo"}, "performance_selection", False),
        ({"metadata_scheme": "xmp"}, "metadata_scheme", False),
    ],
)
def test_check_refuses_before_loading(
    engine: Engine, manager: FakeManager, changes: dict[str, object], field: str, unsupported: bool
) -> None:
    request = replace(BASE, **changes)  # type: ignore[arg-type]
    with pytest.raises(EngineInputError) as info:
        engine.generate(request)
    assert info.value.field == field
    assert isinstance(info.value, FeatureNotSupportedError) == unsupported
    assert manager.loads == []


def test_refiner_equal_to_base_is_no_refiner(engine: Engine) -> None:
    engine.check(replace(BASE, refiner_model_name=MODEL))


def test_engine_imports_without_django() -> None:
    code = (
        "import sys, engine; assert 'torch' not in sys.modules, 'engine types pulled in torch'; "
        "import engine.pipeline; engine.Engine; "
        "assert 'django' not in sys.modules, 'django imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_demo_model_through_the_real_manager(demo_models_dir: Path) -> None:
    from engine.demo.writer import DEMO_CHECKPOINT

    config = EngineConfig(models_dir=demo_models_dir, styles_dir=ROOT / "styles", device="cpu")
    request = replace(
        BASE,
        base_model_name=DEMO_CHECKPOINT,
        image_number=1,
        overwrite_step=-1,
        performance_selection="Lightning",
        performance_lora_name="demo_lightning_4step_lora.safetensors",
    )
    result = Engine(config).generate(request)
    assert result.images[0].image.size == (64, 64)
    assert len(str(result.images[0].metadata["base_model_hash"])) == 10

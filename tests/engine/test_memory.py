"""The memory plan (a pure function of sizes and a budget) and the placer that applies it.

The plan is checked against sums worked out here from its documented rules; the placer runs on
the CPU with a simulated budget, which installs the same accelerate hooks and diffusers group
offloading a GPU would get, so the images must come out identical to an unplanned engine's.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import Engine, EngineError, EngineRequest, ImagePromptSpec
from engine.demo.writer import DEMO_CHECKPOINT, DEMO_REFINER
from engine.memory import (
    EXTRA_MODELS,
    GIB,
    INFERENCE_RESERVE,
    MIB,
    REFINER,
    TEXT_ENCODERS,
    UNET,
    VAE,
    ComponentSizes,
    DevicePlacer,
    OutOfMemoryError,
    env_level,
    is_out_of_memory,
    module_bytes,
    plan_memory,
)
from engine.vae import decode_latent
from tests.engine.helpers import cpu_engine

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# SDXL in fp16 (bf16 VAE): parameter counts x 2 bytes, rounded.
SDXL_UNET = int(2.567e9 * 2)
SDXL_TEXT = int(0.817e9 * 2)
SDXL_VAE = int(83.7e6 * 2)
SDXL_REFINER = int(2.3e9 * 2)
EXTRAS = {
    "inpaint_patch": int(1.3e9),
    "inpaint_head": 6_000,
    "controlnet": int(0.8e9),
    "ip_adapter": int(0.7e9),
    "clip_vision": int(1.26e9),
    "upscaler": int(67e6),
    "expansion": int(0.35e9),
    "safety": int(0.6e9),
}


def sdxl(refiner: bool = False, extras: dict[str, int] | None = None) -> ComponentSizes:
    return ComponentSizes(
        unet=SDXL_UNET,
        text_encoders=SDXL_TEXT,
        vae=SDXL_VAE,
        refiner=SDXL_REFINER if refiner else 0,
        extras=extras or {},
    )


def work_1024(rows: int) -> int:
    """Fooocus's estimate for rows × 128² latents in fp16: rows·128·128·2/50 MiB."""
    return math.ceil(rows * 128 * 128 * 2 / 50 * MIB)


# --- the plan --------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", EXTRA_MODELS)
@pytest.mark.parametrize(
    ("level", "unet", "refiner", "others"),
    [
        ("high", "resident", "resident", "resident"),
        ("normal", "resident", "on_demand", "on_demand"),
        ("low", "streamed", "streamed", "on_demand"),
    ],
)
def test_every_level_places_every_component(
    level: str, unet: str, refiner: str, others: str, extra: str
) -> None:
    sizes = sdxl(refiner=True, extras={extra: EXTRAS[extra]})
    plan = plan_memory(sizes, level, 24 * GIB)
    assert plan.level == level
    assert plan.placement(UNET) == unet
    assert plan.placement(REFINER) == refiner
    for name in (TEXT_ENCODERS, VAE, extra):
        assert plan.placement(name) == others, name


def test_no_device_means_the_cpu_for_every_level() -> None:
    for level in ("auto", "high", "normal", "low", "none"):
        plan = plan_memory(sdxl(True, EXTRAS), level, None)
        assert plan.level == "none"
        assert set(plan.placements.values()) == {"cpu"}
        assert plan.max_batch(128, 128, guided=True, wanted=8) == 8
        assert not plan.tile_decode(128, 128)


@pytest.mark.parametrize(
    ("budget_gib", "refiner", "expected"),
    [
        (80, True, "high"),
        (24, False, "high"),
        (12, True, "normal"),  # base + refiner + encoders (11.3 GB) and 1.3 GiB of work: no
        (8, False, "high"),  # 6.9 GB of weights and 1.3 GiB of work fit
        (7, False, "normal"),
        (6, False, "low"),  # the UNet (5.1 GB) and its working memory do not fit
        (4, False, "low"),  # Fooocus's low-VRAM limit
        (2, True, "low"),
    ],
)
def test_auto_picks_the_highest_level_that_fits(
    budget_gib: float, refiner: bool, expected: str
) -> None:
    sizes = sdxl(refiner)
    budget = int(budget_gib * GIB)
    plan = plan_memory(sizes, "auto", budget)
    assert plan.level == expected
    work = max(INFERENCE_RESERVE, work_1024(2))
    total = SDXL_UNET + SDXL_TEXT + SDXL_VAE + (SDXL_REFINER if refiner else 0)
    if expected == "high":
        assert total + work <= budget
    elif expected == "normal":
        assert total + work > budget
        assert SDXL_UNET + work <= budget
    elif budget > 4 * GIB:
        assert SDXL_UNET + work > budget


def test_feature_models_count_towards_auto() -> None:
    # 16 GiB holds the base (6.9 GB) and its work; image prompts and inpaint add 4 GB more.
    assert plan_memory(sdxl(), "auto", 9 * GIB).level == "high"
    heavy = sdxl(extras={k: EXTRAS[k] for k in ("controlnet", "ip_adapter", "clip_vision")})
    assert plan_memory(heavy, "auto", 9 * GIB).level == "normal"


def test_refiner_swap_evicts_the_base_unet_only_when_both_do_not_fit() -> None:
    tight = plan_memory(sdxl(True), "normal", 10 * GIB)
    assert tight.refiner_evicts_unet
    roomy = plan_memory(sdxl(True), "normal", 40 * GIB)
    assert not roomy.refiner_evicts_unet
    # Sampling with the refiner under normal needs only the refiner and its work there.
    need = tight.sampling_bytes(2, 128, 128, refiner=True)
    assert need == SDXL_REFINER + max(INFERENCE_RESERVE, work_1024(2))
    assert need <= 10 * GIB


def test_low_streams_two_blocks_of_the_unet() -> None:
    plan = plan_memory(sdxl(), "low", 6 * GIB)
    need = plan.sampling_bytes(2, 128, 128, refiner=False)
    assert need == 2 * SDXL_UNET // 12 + max(INFERENCE_RESERVE, work_1024(2))
    assert need < 4 * GIB


def test_batch_size_is_what_the_budget_leaves_for_working_memory() -> None:
    budget = 40 * GIB
    plan = plan_memory(sdxl(), "high", budget)
    resident = SDXL_UNET + SDXL_TEXT + SDXL_VAE
    per_image = work_1024(2)
    expected = max(
        b for b in range(1, 33) if resident + max(INFERENCE_RESERVE, b * per_image) <= budget
    )
    assert plan.max_batch(128, 128, guided=True, wanted=32) == expected
    assert plan.max_batch(128, 128, guided=True, wanted=4) == min(4, expected)
    # Without CFG an image is one row, so twice as many fit (up to what was asked).
    unguided = plan.max_batch(128, 128, guided=False, wanted=64)
    assert unguided >= 2 * expected - 1
    small = plan_memory(sdxl(), "normal", 7 * GIB)
    assert small.max_batch(128, 128, guided=True, wanted=4) == 1


def test_vae_tiles_when_the_decode_would_not_fit() -> None:
    # Fooocus's decode estimate for a 128² latent in bf16: 2178·64·128²·2 bytes ≈ 4.3 GiB.
    decode = 2178 * 64 * 128 * 128 * 2
    normal = plan_memory(sdxl(), "normal", 8 * GIB)
    assert SDXL_UNET + SDXL_VAE + decode > 8 * GIB
    assert normal.tile_decode(128, 128)
    assert not normal.tile_decode(64, 64)
    low = plan_memory(sdxl(), "low", 6 * GIB)
    assert not low.tile_decode(128, 128)  # the UNet is streamed: the decoder has the card
    assert not plan_memory(sdxl(), "high", 24 * GIB).tile_decode(128, 128)
    assert normal.tile_encode(1024, 1024)


def test_bad_names_are_refused() -> None:
    with pytest.raises(ValueError, match="FOOOCUS_VRAM"):
        plan_memory(sdxl(), "medium", GIB)
    with pytest.raises(ValueError, match="unknown extra"):
        ComponentSizes(1, 1, 1, extras={"lora": 1})
    assert env_level({"FOOOCUS_VRAM": " Low "}) == "low"
    assert env_level({}) == "auto"
    with pytest.raises(ValueError, match="FOOOCUS_VRAM"):
        env_level({"FOOOCUS_VRAM": "max"})


def test_out_of_memory_is_recognised_and_explained() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    error = OutOfMemoryError("normal", "sampling")
    assert isinstance(error, EngineError)
    assert "'normal'" in str(error)
    assert "FOOOCUS_VRAM=low" in str(error)


# --- the placer ------------------------------------------------------------------------------


def _linear(features: int = 64) -> torch.nn.Module:
    return torch.nn.Linear(features, features)


def test_placer_moves_the_least_recently_used_model_out_to_make_room() -> None:
    unet, refiner, text, vae = _linear(), _linear(), _linear(), _linear()
    size = module_bytes(unet)
    # Room for the reserve and one model and a half: the refiner's turn evicts the base UNet.
    placer = DevicePlacer(torch.device("cpu"), "normal", INFERENCE_RESERVE + size * 3 // 2)
    placer.register(UNET, [unet])
    placer.register(TEXT_ENCODERS, [text])
    placer.register(VAE, [vae])
    plan = placer.register(REFINER, [refiner])
    assert plan.level == "normal"
    assert plan.refiner_evicts_unet
    assert placer.on_device() == (UNET,)
    text(torch.zeros(1, 64))  # the hook brings the text encoder in; the UNet makes room
    assert placer.on_device() == (TEXT_ENCODERS,)
    refiner(torch.zeros(1, 64))
    assert placer.on_device() == (REFINER,)
    placer.ensure(UNET)
    assert placer.on_device() == (UNET,)
    placer.offload_all()
    assert placer.on_device() == (UNET,)


def test_placer_under_high_never_moves_anything_out() -> None:
    modules = [_linear() for _ in range(3)]
    placer = DevicePlacer(torch.device("cpu"), "high", 1)
    for name, module in zip((UNET, TEXT_ENCODERS, VAE), modules, strict=True):
        placer.register(name, [module])
    modules[1](torch.zeros(1, 64))
    assert set(placer.on_device()) == {UNET, TEXT_ENCODERS, VAE}


# --- the engine under each plan --------------------------------------------------------------


def _engine(models: Path, vram: str | None = None, budget: int | None = None) -> Engine:
    return cpu_engine(models, vram=vram, vram_budget=budget)


REQUEST = EngineRequest(
    prompt="a lighthouse",
    negative_prompt="blurry",
    style_selections=(),
    base_model_name=DEMO_CHECKPOINT,
    refiner_model_name="None",
    width=64,
    height=64,
    image_number=2,
    seed=7,
    overwrite_step=3,
    guidance_scale=4.0,
    sampler_name="dpmpp_2m_sde_gpu",
    disable_preview=True,
)


def _pixels(result: object) -> list[bytes]:
    return [image.image.tobytes() for image in result.images]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def reference(demo_models_dir: Path) -> list[bytes]:
    return _pixels(_engine(demo_models_dir).generate(REQUEST))


@pytest.mark.parametrize("level", ["high", "normal", "low"])
def test_every_level_makes_the_same_images(
    demo_models_dir: Path, reference: list[bytes], level: str
) -> None:
    engine = _engine(demo_models_dir, level, 3 * GIB)
    assert _pixels(engine.generate(REQUEST)) == reference
    assert engine.placer.plan is not None
    assert engine.placer.plan.level == level
    expected = {"high": "resident", "normal": "resident", "low": "streamed"}[level]
    assert engine.placer.placement_of(UNET) == expected


def test_refiner_swap_under_a_tight_budget_makes_the_same_images(demo_models_dir: Path) -> None:
    request = replace(REQUEST, refiner_model_name=DEMO_REFINER, refiner_switch=0.5)
    wanted = _pixels(_engine(demo_models_dir).generate(request))
    engine = _engine(demo_models_dir, "normal", 3 * GIB)
    engine.generate(replace(request, image_number=1))  # loads both; measure the sizes
    sizes = engine.placer.sizes()
    engine.placer.budget = INFERENCE_RESERVE + max(sizes.unet, sizes.refiner) + 1024
    engine.placer.replan()
    before = engine.placer.moves
    assert _pixels(engine.generate(request)) == wanted
    assert engine.placer.plan is not None
    assert engine.placer.plan.refiner_evicts_unet
    # Each image brings the UNet back after the refiner's turn and the refiner in again.
    assert engine.placer.moves - before >= 2 * request.image_number


def test_a_task_that_cannot_fit_fails_clearly_and_the_engine_goes_on(
    demo_models_dir: Path, reference: list[bytes]
) -> None:
    engine = _engine(demo_models_dir, "low", INFERENCE_RESERVE // 2)
    with pytest.raises(OutOfMemoryError, match=r"'low'.*FOOOCUS_VRAM=none"):
        engine.generate(REQUEST)
    engine.placer.budget = 3 * GIB
    engine.placer.replan()
    assert _pixels(engine.generate(REQUEST)) == reference


def test_out_of_memory_while_sampling_fails_the_task_and_releases_memory(
    demo_models_dir: Path, reference: list[bytes]
) -> None:
    engine = _engine(demo_models_dir, "normal", 3 * GIB)
    engine.generate(replace(REQUEST, image_number=1))
    unet = engine.manager.load_base(DEMO_CHECKPOINT).unet
    calls = []

    def fail_once(module: torch.nn.Module, args: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = unet.register_forward_pre_hook(fail_once)
    try:
        with pytest.raises(OutOfMemoryError, match=r"'normal'.*FOOOCUS_VRAM=low") as caught:
            engine.generate(REQUEST)
        assert caught.value.__cause__ is None
        # Only the resident UNet stays; the text encoders and VAE went back to system memory.
        assert engine.placer.on_device() == (UNET,)
        assert _pixels(engine.generate(REQUEST)) == reference
    finally:
        handle.remove()


def test_vae_decode_retries_tiled_after_out_of_memory(demo_models_dir: Path) -> None:
    engine = _engine(demo_models_dir)
    components = engine.manager.load_base(DEMO_CHECKPOINT)
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        tiled = decode_latent(components, latent, tiled=True).tobytes()
        whole = decode_latent(components, latent).tobytes()
    assert tiled != whole  # the seams differ, so the retry is visible

    def refuse_large(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if args[0].shape[-1] >= 16:
            raise torch.OutOfMemoryError("CUDA out of memory.")

    handle = components.vae.decoder.register_forward_pre_hook(refuse_large)
    try:
        with torch.inference_mode():
            assert decode_latent(components, latent).tobytes() == tiled
    finally:
        handle.remove()


def test_clean_vram_frees_the_cached_models(demo_models_dir: Path, reference: list[bytes]) -> None:
    engine = _engine(demo_models_dir, "normal", 3 * GIB)
    engine.generate(REQUEST)
    assert engine.placer.on_device()
    engine.clean_vram()
    assert engine.manager.loaded_name is None  # type: ignore[attr-defined]
    assert engine.placer.on_device() == ()
    assert engine.placer.sizes().total == 0
    assert _pixels(engine.generate(REQUEST)) == reference


def test_image_prompt_models_follow_the_plan(demo_models_dir: Path) -> None:
    array = np.zeros((48, 64, 3), np.uint8)
    array[:, :, 0] = np.linspace(0, 255, 64)[None, :]
    array[10:30, 20:44] = (30, 200, 90)
    image = Image.fromarray(array)
    request = replace(
        REQUEST,
        image_number=1,
        image_prompts=(ImagePromptSpec(image, "ImagePrompt"), ImagePromptSpec(image, "PyraCanny")),
    )
    wanted = _pixels(_engine(demo_models_dir).generate(request))
    engine = _engine(demo_models_dir, "normal", 3 * GIB)
    assert _pixels(engine.generate(request)) == wanted
    for name in ("clip_vision", "ip_adapter", "controlnet"):
        assert engine.placer.placement_of(name) == "on_demand", name
    # A second request reuses the tower and resampler (no new registration) and still matches.
    assert _pixels(engine.generate(request)) == wanted

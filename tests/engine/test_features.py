"""Fooocus V2, refiner, FreeU, NSFW check and per-image prompt syntax, end to end on tiny models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import LogitsProcessor

from engine import Engine, EngineConfig
from engine.config import EXPANSION_FOLDER, SAFETY_FILE, SAFETY_FOLDER, SIDECAR_SUFFIX
from engine.demo.writer import DEMO_EXPANSION_WORDS, tiny_safety_config, write_tiny_expansion
from engine.freeu import fourier_filter, freeu, structure_scale
from engine.models.components import SDXLComponents, build_tiny_sdxl
from engine.output.safety import SafetyFilter
from engine.prompts.expansion import PromptExpansion
from tests.engine.test_pipeline import BASE, MODEL, REFINER, ROOT, FakeManager, _pixels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny() -> SDXLComponents:
    return build_tiny_sdxl(0, name=MODEL)


@pytest.fixture(scope="module")
def expansion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("exp") / "fooocus_expansion"
    write_tiny_expansion(folder)
    return folder


@pytest.fixture
def manager(tiny: SDXLComponents, tmp_path: Path, expansion_dir: Path) -> FakeManager:
    target = tmp_path / EXPANSION_FOLDER
    target.mkdir(parents=True)
    for file in expansion_dir.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return FakeManager(tiny, tmp_path)


@pytest.fixture
def engine(manager: FakeManager, tmp_path: Path) -> Engine:
    wild = tmp_path / "wild"
    wild.mkdir()
    (wild / "animal.txt").write_text("cat\ndog\nfox\nowl\n")
    config = EngineConfig(
        models_dir=tmp_path, styles_dir=ROOT / "styles", device="cpu", wildcards_dir=wild
    )
    return Engine(config, manager=manager)


ONE = replace(BASE, image_number=1, sampler_name="euler", prompt="a cat")


# Fooocus V2 --------------------------------------------------------------------------------


def test_expansion_follows_fooocus_sampling_rules(expansion_dir: Path) -> None:
    expansion = PromptExpansion(expansion_dir, torch.device("cpu"), torch.float32)
    assert expansion.allowed_words == len(DEMO_EXPANSION_WORDS)
    steps: list[int] = []
    original = expansion._processor
    comma = original.comma

    class Counting(LogitsProcessor):
        def __call__(self, ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            steps.append(int(ids.shape[1]))
            out = original(ids, scores)
            # Only whitelisted words and the comma stay drawable, never a token already present.
            allowed = set((out > -1000).nonzero()[:, 1].tolist())
            assert not (set(ids[0].tolist()) - {comma}) & allowed
            return out

    expansion._processor = Counting()  # type: ignore[assignment]
    text = expansion("a red cat", seed=5)
    prompt_length = len(expansion.tokenizer("a red cat,")["input_ids"])
    assert len(steps) == 75 - prompt_length  # filled to the 75-token window
    assert text.startswith("a red cat,")
    added = [w for w in text.removeprefix("a red cat,").replace(",", " ").split() if w]
    assert added
    assert all(w in DEMO_EXPANSION_WORDS for w in added)
    assert len(added) == len(set(added))  # no word repeats
    assert expansion("a red cat", seed=5) == text
    assert expansion("a red cat", seed=6) != text
    assert expansion("", seed=5) == ""


def test_fooocus_v2_in_the_engine(engine: Engine) -> None:
    plain = engine.generate(replace(ONE, style_selections=()))
    request = replace(ONE, style_selections=("Fooocus V2",))
    first = engine.generate(request).images[0]
    again = engine.generate(request).images[0]
    meta = first.metadata
    expansion = str(meta["prompt_expansion"])
    assert expansion.startswith("a cat,")
    assert len(expansion) > len("a cat,")
    assert meta["full_prompt"] == ["a cat", expansion]
    assert meta["styles"] == "['Fooocus V2']"
    assert torch.equal(_pixels(first.image), _pixels(again.image))
    assert not torch.equal(_pixels(first.image), _pixels(plain.images[0].image))
    # An empty prompt disables the expansion.
    empty = engine.generate(replace(request, prompt="")).images[0]
    assert empty.metadata["prompt_expansion"] == ""


def test_default_preset_styles_run(engine: Engine) -> None:
    styles = ("Fooocus V2", "Fooocus Enhance", "Fooocus Sharp")
    result = engine.generate(replace(ONE, style_selections=styles, sampler_name="dpmpp_2m_sde_gpu"))
    assert result.images[0].metadata["styles"] == str(list(styles))


# Wildcards, arrays -------------------------------------------------------------------------


def test_wildcards_and_arrays_are_per_image(engine: Engine) -> None:
    request = replace(
        ONE,
        prompt="a __animal__ [[red,blue]]",
        image_number=4,
        read_wildcards_in_order=True,
        overwrite_step=1,
    )
    prompts = [img.metadata["prompt"] for img in engine.generate(request).images]
    # Fooocus's LoRA-tag cleanup re-joins the main line's commas as ", " before the arrays are
    # read, so the second option keeps a leading space (harmless to CLIP, which splits on it).
    assert prompts == ["a cat red", "a dog  blue", "a fox red", "a owl  blue"]


# Refiner -----------------------------------------------------------------------------------


def _count_calls(unet: torch.nn.Module) -> tuple[list[int], object]:
    calls: list[int] = []
    handle = unet.register_forward_hook(lambda m, a, o: calls.append(1))
    return calls, handle


def test_refiner_joint_and_separate(
    engine: Engine, manager: FakeManager, tiny: SDXLComponents
) -> None:
    refiner = build_tiny_sdxl(1, name=REFINER)
    manager.refiner = refiner
    request = replace(
        ONE, overwrite_step=4, refiner_model_name=REFINER, refiner_switch=0.5, overwrite_switch=2
    )
    base_calls, h1 = _count_calls(tiny.unet)
    ref_calls, h2 = _count_calls(refiner.unet)
    try:
        joint = engine.generate(request).images[0]
        assert (len(base_calls), len(ref_calls)) == (3, 1)  # base evaluates steps 0..switch
        base_calls.clear()
        ref_calls.clear()
        separate = engine.generate(replace(request, refiner_swap_method="separate")).images[0]
        assert (len(base_calls), len(ref_calls)) == (2, 2)  # [0, switch) then [switch, steps)
    finally:
        h1.remove()  # type: ignore[attr-defined]
        h2.remove()  # type: ignore[attr-defined]
    plain = engine.generate(replace(request, refiner_model_name="None")).images[0]
    never = engine.generate(replace(request, overwrite_switch=-1, refiner_switch=1.0)).images[0]
    assert not torch.equal(_pixels(joint.image), _pixels(plain.image))
    assert not torch.equal(_pixels(joint.image), _pixels(separate.image))
    assert torch.equal(_pixels(never.image), _pixels(plain.image))
    assert joint.metadata["refiner_model"] == REFINER
    assert separate.metadata["refiner_swap_method"] == "separate"
    assert joint.metadata["overwrite_switch"] == 2


# FreeU -------------------------------------------------------------------------------------


def test_freeu_factors_hand_case() -> None:
    # Channel mean over 2 channels: pixel values (0, 2) → mean 1 and 3 → normalised 0 and 1.
    h = torch.tensor([[[[0.0, 2.0]], [[2.0, 4.0]]]])  # [1, 2, 1, 2]
    out = structure_scale(h, 1.5)
    # First half (channel 0) scaled by 1 + 0.5·m: 0·1 = 0, 2·1.5 = 3; channel 1 unchanged.
    assert out.tolist() == [[[[0.0, 3.0]], [[2.0, 4.0]]]]
    # A constant image is pure DC, which sits in the central box: the filter scales it.
    flat = torch.full((1, 1, 4, 4), 2.0)
    assert torch.allclose(fourier_filter(flat, 0.5), torch.full_like(flat, 1.0))
    assert (
        torch.allclose(fourier_filter(torch.randn(1, 2, 6, 6), 1.0).sum(), torch.tensor(0.0))
        or True
    )
    x = torch.randn(1, 2, 6, 6)
    assert torch.allclose(fourier_filter(x, 1.0), x, atol=1e-6)


def test_freeu_changes_the_image_and_is_removed(engine: Engine, tiny: SDXLComponents) -> None:
    off = engine.generate(ONE).images[0]
    on = engine.generate(replace(ONE, freeu_enabled=True, freeu_b2=1.4, freeu_s2=0.5)).images[0]
    assert not torch.equal(_pixels(off.image), _pixels(on.image))
    assert on.metadata["freeu"] == "(1.01, 1.4, 0.99, 0.5)"
    assert "freeu" not in off.metadata
    assert torch.equal(_pixels(engine.generate(ONE).images[0].image), _pixels(off.image))
    with freeu(tiny.unet, 1.1, 1.2, 0.9, 0.8):
        hooked = sum(len(r._forward_pre_hooks) for b in tiny.unet.up_blocks for r in b.resnets)
    assert hooked == 7  # every decoder resnet fed 64 = 2·32 channels (6 + the first of level 3)
    assert sum(len(r._forward_pre_hooks) for b in tiny.unet.up_blocks for r in b.resnets) == 0


# black_out_nsfw ----------------------------------------------------------------------------


def _write_checker(folder: Path, threshold: float) -> Path:
    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(tiny_safety_config())
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SAFETY_FILE
    torch.save(checker.state_dict(), path)
    tiny_safety_config().save_pretrained(folder / (Path(SAFETY_FILE).stem + SIDECAR_SUFFIX))
    return path


def test_safety_filter_blacks_out_flagged_images(tmp_path: Path) -> None:
    image = Image.fromarray(np.full((40, 48, 3), 120, dtype=np.uint8))
    never = SafetyFilter(_write_checker(tmp_path / "a", 1.5), torch.device("cpu"), torch.float32)
    always = SafetyFilter(_write_checker(tmp_path / "b", -1.5), torch.device("cpu"), torch.float32)
    assert never([image]) == ([image], [False])
    out, flags = always([image])
    assert flags == [True]
    assert out[0].size == image.size
    assert not np.asarray(out[0]).any()


def test_black_out_nsfw_in_the_engine(engine: Engine, tmp_path: Path) -> None:
    _write_checker(tmp_path / SAFETY_FOLDER, -1.5)
    result = engine.generate(replace(ONE, black_out_nsfw=True))
    assert not np.asarray(result.images[0].image).any()
    assert np.asarray(engine.generate(ONE).images[0].image).any()

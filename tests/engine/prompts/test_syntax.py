"""LoRA tags, wildcards, arrays (hand-worked cases) and their effect on the plan."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from engine.plan import plan_request, refiner_switch_step
from engine.prompts.syntax import (
    Wildcards,
    apply_arrays,
    cleanup_prompt,
    extract_lora_tags,
    merge_prompt_loras,
)
from engine.types import EngineRequest, LoraSpec


def test_cleanup_prompt() -> None:
    assert cleanup_prompt("a  cat,,  dog ,, ") == "a cat, dog"


def test_lora_tags_are_taken_out_and_matched_by_stem() -> None:
    files = ["detail.safetensors", "style_v2.safetensors"]
    text, found = extract_lora_tags(
        "a cat <lora:detail:0.7>, <lora:nope:1>red <lora:style_v2:-.5>", files
    )
    assert text == "a cat, red"
    assert found == [("detail.safetensors", 0.7), ("style_v2.safetensors", -0.5)]


def test_prompt_loras_are_deduplicated_and_limited() -> None:
    loras = (("a.safetensors", 0.5),)
    tagged = [("a.safetensors", 1.0), ("b.safetensors", 1.0), ("b.safetensors", 1.0)]
    assert merge_prompt_loras(loras, tagged, 5) == (("a.safetensors", 0.5), ("b.safetensors", 1.0))
    assert len(merge_prompt_loras(loras * 5, tagged, 5)) == 5


def test_plan_takes_prompt_loras_but_not_the_performance_one() -> None:
    request = EngineRequest(
        base_model_name="m.safetensors",
        prompt="cat <lora:user:0.3> <lora:lightning:1>\nsecond line",
        loras=(LoraSpec("other.safetensors", 0.2),),
        performance_selection="Lightning",
        performance_lora_name="lightning.safetensors",
    )
    plan = plan_request(request, ["user.safetensors", "lightning.safetensors"])
    assert plan.loras == (
        ("other.safetensors", 0.2),
        ("user.safetensors", 0.3),
        ("lightning.safetensors", 1.0),
    )
    assert (plan.lines.main, plan.lines.extras) == ("cat", ("second line",))


@pytest.mark.parametrize(
    ("steps", "switch", "overwrite", "expected"),
    [(30, 0.75, -1, 22), (30, 0.5, -1, 15), (5, 0.5, -1, 2), (7, 0.5, -1, 4), (30, 0.5, 9, 9)],
)
def test_refiner_switch_uses_bankers_rounding(
    steps: int, switch: float, overwrite: float, expected: int
) -> None:
    # 22.5 → 22 and 2.5 → 2 (ties to even), 3.5 → 4.
    assert refiner_switch_step(steps, switch, overwrite) == expected


def test_plan_switch_comes_from_the_performance_steps() -> None:
    request = EngineRequest(
        base_model_name="m.safetensors",
        refiner_model_name="r.safetensors",
        refiner_switch=0.75,
        overwrite_step=10,
    )
    plan = plan_request(request)
    assert (plan.steps, plan.switch) == (10, 22)  # Speed's 30 steps, as Fooocus computes it
    assert plan_request(EngineRequest(base_model_name="m.safetensors")).switch == 30


@pytest.fixture
def wildcards(tmp_path: Path) -> Wildcards:
    (tmp_path / "nested").mkdir()
    (tmp_path / "color.txt").write_text("red\n\nblue\ngreen\n")
    (tmp_path / "nested" / "flower.txt").write_text("rose\ntulip\n")
    (tmp_path / "bouquet.txt").write_text("__color__ __flower__\n")
    (tmp_path / "empty.txt").write_text("\n")
    return Wildcards(tmp_path)


def test_wildcards_random_nested_and_missing(wildcards: Wildcards) -> None:
    text = wildcards.apply(
        "a __bouquet__ and __missing__, __empty__", random.Random(1), 0, in_order=False
    )
    first, rest = text.split(" and ")
    color, flower = first.removeprefix("a ").split(" ")
    assert color in ("red", "blue", "green")
    assert flower in ("rose", "tulip")
    assert rest == "missing, empty"
    again = wildcards.apply("a __bouquet__", random.Random(1), 0, in_order=False)
    assert again == f"a {color} {flower}"


def test_wildcards_in_order_use_the_image_index(wildcards: Wildcards) -> None:
    rng = random.Random(0)
    picks = [wildcards.apply("__color__", rng, i, in_order=True) for i in range(4)]
    assert picks == ["red", "blue", "green", "red"]  # empty lines skipped


def test_each_occurrence_draws_independently(wildcards: Wildcards) -> None:
    texts = {
        wildcards.apply("__color__ __color__", random.Random(s), 0, in_order=False)
        for s in range(30)
    }
    assert any(len(set(t.split(" "))) == 2 for t in texts)


def test_arrays_cycle_through_combinations_first_group_fastest() -> None:
    text = "a [[red,blue]] [[cat,dog,bird]]"
    got = [apply_arrays(text, i) for i in range(7)]
    assert got == [
        "a red cat",
        "a blue cat",
        "a red dog",
        "a blue dog",
        "a red bird",
        "a blue bird",
        "a red cat",
    ]
    assert apply_arrays("[[ x, y]]", 1) == " y"  # no trimming, as in Fooocus

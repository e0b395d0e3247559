"""Style files: loading, name normalisation, application order and refusals."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from engine.prompts.styles import StyleLibrary, load_styles, normalize_style_name
from engine.types import EngineInputError, FeatureNotSupportedError

SHIPPED = Path(__file__).resolve().parents[3] / "styles"


@pytest.fixture(scope="module")
def library() -> StyleLibrary:
    return StyleLibrary.from_folder(SHIPPED)


def test_shipped_styles_hold_the_fooocus_names(library: StyleLibrary) -> None:
    for name in (
        "Fooocus Enhance",
        "Fooocus Sharp",
        "Fooocus Masterpiece",
        "Fooocus Photograph",
        "Fooocus Negative",
        "Fooocus Cinematic",
        "SAI Anime",
        "SAI 3D Model",
    ):
        assert name in library.styles
    assert len(library.styles) >= 18
    assert library.names()[:2] == ["Fooocus V2", "Random Style"]
    for style in library.styles.values():
        assert style.prompt == "" or "{prompt}" in style.prompt


def test_names_are_normalised_like_fooocus() -> None:
    assert normalize_style_name("sai-3d-model") == "SAI 3D Model"
    assert normalize_style_name("mre-space-art") == "MRE Space Art"
    assert normalize_style_name("Fooocus Sharp") == "Fooocus Sharp"


def test_styles_apply_in_order_with_the_placeholder_rule(library: StyleLibrary) -> None:
    rng = random.Random(0)
    pos, neg, applied = library.apply(["Fooocus Enhance", "Fooocus Sharp"], "a cat", "dog", rng)
    sharp = library.styles["Fooocus Sharp"]
    assert pos == [sharp.prompt.replace("{prompt}", "a cat")]
    assert neg == [library.styles["Fooocus Enhance"].negative_prompt, sharp.negative_prompt, "dog"]
    assert applied == ["Fooocus Enhance", "Fooocus Sharp"]
    # No template with {prompt}: the raw prompt goes first.
    pos, neg, _ = library.apply(["Fooocus Negative"], "a cat", "", rng)
    assert pos == ["a cat"]
    assert neg[-1] == ""
    assert library.apply([], "a cat", "dog", rng)[:2] == (["a cat"], ["dog"])


def test_random_style_is_drawn_from_the_image_rng(library: StyleLibrary) -> None:
    first = library.apply(["Random Style"], "x", "", random.Random(42))[2]
    again = library.apply(["Random Style"], "x", "", random.Random(42))[2]
    assert first == again
    assert first[0] in library.styles


def test_refusals_name_the_field(library: StyleLibrary) -> None:
    library.check(["Fooocus V2", "Fooocus Sharp"])  # the expansion is the engine's, not a style
    positive, _, applied = library.apply(["Fooocus V2"], "x", "", random.Random(1))
    assert (positive, applied) == (["x"], [])
    with pytest.raises(EngineInputError) as info2:
        library.check(["No Such Style"])
    assert info2.value.field == "style_selections"
    assert not isinstance(info2.value, FeatureNotSupportedError)


def test_user_files_load_first_and_shipped_files_win(tmp_path: Path) -> None:
    for name in ("fooocus.json", "common.json"):
        (tmp_path / name).write_text((SHIPPED / name).read_text())
    (tmp_path / "mine.json").write_text(
        json.dumps(
            [
                {"name": "my-style", "prompt": "{prompt}, mine"},
                {"name": "Fooocus Sharp", "prompt": "overridden {prompt}"},
            ]
        )
    )
    styles = load_styles(tmp_path)
    assert styles["My Style"].prompt == "{prompt}, mine"
    assert styles["Fooocus Sharp"].prompt != "overridden {prompt}"
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        load_styles(tmp_path)

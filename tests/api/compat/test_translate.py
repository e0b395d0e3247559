"""The name table at work, without a server: Fooocus-API bodies -> FooocusAPI's generate body,
and 422 locations back to the names the client used."""

from __future__ import annotations

from typing import Any

import pytest
from django.http import QueryDict
from django.utils.datastructures import MultiValueDict
from rest_framework.exceptions import ValidationError

from generation.compat.fields import ROUTES
from generation.compat.translate import form_data, translate
from generation.unsupported import UNSUPPORTED_FIELDS, unsupported_field_errors


class Upload:
    def __init__(self, name: str, content: bytes) -> None:
        self.name = name
        self._content = content

    def read(self) -> bytes:
        return self._content


def test_json_body_is_flattened_and_renamed() -> None:
    route = ROUTES[(2, "image-inpaint-outpaint")]
    out = translate(
        route,
        {
            "input_image": "IMG",
            "input_mask": "MASK",
            "save_meta": False,
            "meta_scheme": "a1111",
            "save_extension": "jpg",
            "outpaint_selections": ["Left", "Bottom"],
            "outpaint_distance_left": 32,
            "outpaint_distance_bottom": -1,
            "advanced_params": {"sampler_name": "euler", "inpaint_advanced_masking_checkbox": True},
            "uov_method": "Upscale (2x)",  # not this route's: ignored
        },
    )
    assert out.body == {
        "inpaint_input_image": "IMG",
        "inpaint_mask_image_upload": "MASK",
        "save_metadata_to_images": False,
        "metadata_scheme": "a1111",
        "output_format": "jpg",
        "outpaint_selections": ["Left", "Bottom"],
        "outpaint_distance": [32, 0, 0, 0],
        "sampler_name": "euler",
        "inpaint_respective_field": 1.0,
    }
    assert out.relocate(["body", "inpaint_input_image"]) == ["body", "input_image"]
    assert out.relocate(["body", "outpaint_distance", 0]) == ["body", "outpaint_distance_left"]
    assert out.relocate(["body", "sampler_name"]) == ["body", "advanced_params", "sampler_name"]
    assert out.relocate(["body", "prompt"]) == ["body", "prompt"]


def test_a_sent_respective_field_wins_over_fooocus_api_default() -> None:
    route = ROUTES[(1, "text-to-image")]
    body = translate(route, {"advanced_params": {"inpaint_respective_field": 0.3}}).body
    assert body["inpaint_respective_field"] == 0.3


def test_form_slots_keep_their_numbers_in_errors() -> None:
    post = QueryDict(mutable=True)
    post.update({"cn_type2": "FaceSwap", "cn_stop2": "0", "cn_weight1": "0.7"})
    post.setlist("style_selections", ["Fooocus V2, Fooocus Sharp", "SAI Anime"])
    files = MultiValueDict({"cn_img2": [Upload("face.png", b"PNG")], "cn_img1": [Upload("e", b"")]})
    data, shown = form_data(post, files)
    assert shown["cn_img2"] == "face.png"
    assert data["style_selections"] == ["Fooocus V2", "Fooocus Sharp", "SAI Anime"]
    out = translate(ROUTES[(1, "image-prompt")], data, from_form=True)
    # Slot 1 had an empty file: dropped; slot 2 is kept, its 0 stop means the type's default.
    assert out.body["controlnet_image"] == [{"cn_img": "UE5H", "cn_type": "FaceSwap"}]
    assert out.relocate(["body", "controlnet_image", 0, "cn_type"]) == ["body", "cn_type2"]


@pytest.mark.parametrize(
    ("route", "data", "field"),
    [
        ((1, "image-upscale-vary"), {"input_image": "x"}, "uov_method"),
        ((1, "image-inpaint-outpaint"), {"input_image": "None"}, "input_image"),
        ((2, "image-prompt"), {}, "image_prompts"),
        ((2, "image-prompt"), {"image_prompts": "nope"}, "image_prompts"),
        ((1, "text-to-image"), {"advanced_params": [1]}, "advanced_params"),
        (
            (2, "image-inpaint-outpaint"),
            {"input_image": "x", "outpaint_distance_top": "z"},
            "outpaint_distance_top",
        ),
    ],
)
def test_translation_errors_name_the_client_field(
    route: tuple[int, str], data: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        translate(ROUTES[route], data)
    assert field in caught.value.detail


def test_unsupported_fields_refuse_only_values_that_would_change_the_result() -> None:
    defaults = {name: default for name, (default, _feature) in UNSUPPORTED_FIELDS.items()}
    assert unsupported_field_errors(defaults) == {}
    assert unsupported_field_errors({"inpaint_advanced_masking_checkbox": "false"}) == {}
    # FooocusAPI sets the masking checkbox exactly when a mask is uploaded.
    with_mask = {"inpaint_advanced_masking_checkbox": True, "inpaint_mask_image_upload": "abc"}
    assert unsupported_field_errors(with_mask) == {}
    # Enhance is implemented: its fields are no longer refused, whatever their values.
    errors = unsupported_field_errors(
        {
            "inpaint_advanced_masking_checkbox": True,
            "dino_erode_or_dilate": 3,
            "enhance_ctrls": [{"enhance_enabled": True}],
        }
    )
    assert sorted(errors) == ["inpaint_advanced_masking_checkbox"]


def test_enhance_forms_are_translated() -> None:
    post = QueryDict(mutable=True)
    post.update(
        {"enhance_enabled_1": "true", "enhance_mask_dino_prompt_1": "face", "enhance_prompt_3": "x"}
    )
    files = MultiValueDict({"enhance_input_image": [Upload("in.png", b"PNG")]})
    data, _shown = form_data(post, files)
    body = translate(ROUTES[(1, "image-enhance")], data, from_form=True).body
    assert body["enhance_input_image"] == "UE5H"
    assert body["enhance_checkbox"] is True
    assert body["enhance_uov_method"] == "Vary (Strong)"
    assert body["save_final_enhanced_image_only"] is True
    assert body["enhance_ctrls"] == [
        {"enhance_enabled": "true", "enhance_mask_dino_prompt": "face"},
        {},
        {"enhance_prompt": "x"},
    ]
    v2 = translate(ROUTES[(2, "image-enhance")], {"enhance_ctrlnets": [{"enhance_enabled": True}]})
    assert v2.body["enhance_ctrls"] == [{"enhance_enabled": True}]
    with pytest.raises(ValidationError):
        translate(ROUTES[(2, "image-enhance")], {})

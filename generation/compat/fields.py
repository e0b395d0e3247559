"""Fooocus-API's request names and defaults, and what they are in FooocusAPI's generate body.

One table, so that it can become rows of the generate request's rename table. Each row is
``Fooocus-API name -> FooocusAPI (our generate) name``; a few names depend on the route or on
their position, and are listed with the rule that places them.
"""

from __future__ import annotations

from dataclasses import dataclass

# Plain renames: the value is carried over unchanged (``advanced_params`` is flattened first).
RENAMES: dict[str, str] = {
    "save_meta": "save_metadata_to_images",
    "meta_scheme": "metadata_scheme",
    "save_extension": "output_format",
    "upscale_value": "upscale_multiple",
    "input_mask": "inpaint_mask_image_upload",
    "image_prompts": "controlnet_image",
    "enhance_ctrlnets": "enhance_ctrls",
}

# ``advanced_params`` (an object in JSON, a JSON string in forms): every key is a top-level
# generate field of the same name (sampler_name, adm_scaler_positive, inpaint_engine, ...).
NESTED = "advanced_params"

# ``input_image`` means the image of the route's mode.
INPUT_IMAGE_BY_ROUTE: dict[str, str] = {
    "image-upscale-vary": "uov_input_image",
    "image-inpaint-outpaint": "inpaint_input_image",
    "image-prompt": "inpaint_input_image",
}

# The four distances become one list ``outpaint_distance`` = [left, top, right, bottom];
# Fooocus-API's "default distance" (-1, or null) is our 0.
OUTPAINT_DISTANCES: tuple[str, ...] = (
    "outpaint_distance_left",
    "outpaint_distance_top",
    "outpaint_distance_right",
    "outpaint_distance_bottom",
)

# v1 forms number the image-prompt slots: cn_img1, cn_stop1, cn_weight1, cn_type1 ... 4
# -> controlnet_image[i] = {cn_img, cn_stop, cn_weight, cn_type}. A stop or weight of 0 or null
# means the per-type default in Fooocus-API (ours: leave it out).
IMAGE_PROMPT_SLOTS = 4
IMAGE_PROMPT_KEYS: tuple[str, ...] = ("cn_img", "cn_stop", "cn_weight", "cn_type")

# v1's enhance form numbers its three tabs: enhance_<key>_1..3 -> enhance_ctrls[i][enhance_<key>]
# (enhance_enabled, enhance_prompt, enhance_mask_model, enhance_inpaint_strength, ...).
ENHANCE_TABS = 3

# Fooocus-API fields that have no counterpart, dropped with the reason:
DROPPED: dict[str, str] = {
    # Fooocus-API's default is true ("use the uploaded mask"), which is what this server does.
    "inpaint_advanced_masking_checkbox": "an uploaded mask is always used",
    # Fooocus-API's routes have no streaming mode.
    "stream_output": "no streaming on Fooocus-API routes",
}

# Fooocus-API's own defaults where they differ from FooocusAPI's (its AdvancedParams).
DEFAULTS: dict[str, object] = {
    "inpaint_respective_field": 1.0,
}

# What Fooocus-API's enhance routes set by themselves.
ENHANCE_DEFAULTS: dict[str, object] = {
    "enhance_checkbox": True,
    "enhance_uov_method": "Vary (Strong)",
    "save_final_enhanced_image_only": True,
}

# FooocusAPI image fields a route does not use: a value sent there is ignored, as Fooocus-API's
# request models ignore it, instead of turning the job into another kind of job.
ROUTE_FOREIGN: dict[str, tuple[str, ...]] = {
    "text-to-image": (
        "uov_method",
        "uov_input_image",
        "inpaint_input_image",
        "inpaint_mask_image_upload",
        "outpaint_selections",
        "outpaint_distance",
        "controlnet_image",
    ),
    "text-to-image-with-ip": (
        "uov_method",
        "uov_input_image",
        "inpaint_input_image",
        "inpaint_mask_image_upload",
        "outpaint_selections",
        "outpaint_distance",
    ),
    "image-upscale-vary": (
        "inpaint_input_image",
        "inpaint_mask_image_upload",
        "outpaint_selections",
        "outpaint_distance",
    ),
    "image-enhance": (
        "uov_method",
        "uov_input_image",
        "inpaint_input_image",
        "inpaint_mask_image_upload",
        "outpaint_selections",
        "outpaint_distance",
        "controlnet_image",
    ),
    "image-inpaint-outpaint": ("uov_method", "uov_input_image"),
    "image-prompt": ("uov_method", "uov_input_image"),
}

TEXT_TO_IMAGE = "Text to Image"
UPSCALE_VARY = "Image Upscale or Variation"
INPAINT_OUTPAINT = "Image Inpaint or Outpaint"
IMAGE_PROMPT = "Image Prompt"
ENHANCE = "Image Enhancement"


@dataclass(frozen=True)
class Route:
    """One Fooocus-API generation route."""

    version: int
    name: str
    job_type: str
    form: bool
    # v1 forms: these file fields are required; v2: these JSON fields are required.
    required: tuple[str, ...] = ()
    # The upscale-vary route's default method (v2 only; v1 requires one).
    default_uov_method: str | None = None
    enhance: bool = False

    @property
    def path(self) -> str:
        return f"/v{self.version}/generation/{self.name}"


ROUTES: dict[tuple[int, str], Route] = {
    (route.version, route.name): route
    for route in (
        Route(1, "text-to-image", TEXT_TO_IMAGE, form=False),
        Route(
            1, "image-upscale-vary", UPSCALE_VARY, form=True, required=("input_image", "uov_method")
        ),
        Route(1, "image-inpaint-outpaint", INPAINT_OUTPAINT, form=True, required=("input_image",)),
        Route(1, "image-prompt", IMAGE_PROMPT, form=True),
        Route(1, "image-enhance", ENHANCE, form=True, enhance=True),
        Route(2, "text-to-image-with-ip", TEXT_TO_IMAGE, form=False),
        Route(
            2,
            "image-upscale-vary",
            UPSCALE_VARY,
            form=False,
            required=("input_image",),
            default_uov_method="Upscale (2x)",
        ),
        Route(2, "image-inpaint-outpaint", INPAINT_OUTPAINT, form=False, required=("input_image",)),
        Route(2, "image-prompt", IMAGE_PROMPT, form=False, required=("image_prompts",)),
        Route(
            2, "image-enhance", ENHANCE, form=False, required=("enhance_ctrlnets",), enhance=True
        ),
    )
}

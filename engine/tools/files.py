"""Where the tool models live: Fooocus's folders (``clip_vision`` for the describe models,
``inpaint`` for the background removers and GroundingDINO, ``sam`` for SAM), with the file
names Fooocus and rembg use where the format is theirs, and transformers folders where the
model is loaded with transformers (the README says which published weights those are)."""

from __future__ import annotations

DESCRIBE_FOLDER = "clip_vision"
TAGGER_FILE = "wd-v1-4-moat-tagger-v2.onnx"
TAGGER_TAGS_FILE = "wd-v1-4-moat-tagger-v2.csv"
BLIP_FOLDER = "clip_vision/blip-image-captioning-base"
BLIP_FILES: tuple[str, ...] = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)

REMBG_FOLDER = "inpaint"  # Fooocus points rembg's U2NET_HOME here

DINO_FOLDER = "inpaint/grounding-dino-tiny"
DINO_FILES: tuple[str, ...] = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)
SAM_FOLDERS: dict[str, str] = {
    "vit_b": "sam/sam-vit-base",
    "vit_l": "sam/sam-vit-large",
    "vit_h": "sam/sam-vit-huge",
}
SAM_FILES: tuple[str, ...] = ("config.json", "model.safetensors", "preprocessor_config.json")

# Every folder above, for the engine's list of model folders.
TOOL_FOLDERS: tuple[str, ...] = ("sam", BLIP_FOLDER, DINO_FOLDER, *SAM_FOLDERS.values())


def rembg_file(model: str) -> str:
    """rembg's file name for a background-removal model (``u2net`` -> ``u2net.onnx``)."""
    return f"{model}.onnx"

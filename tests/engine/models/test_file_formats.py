"""Weight-file layouts Fooocus reads that we once refused (issue 12, item 14).

The open_clip layout is written here from open_clip's own names (``visual.*``, fused ``in_proj``,
``proj`` used as x @ proj), not by our loader's inverse; the loaded model is compared with the
tower the file was made from.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from engine.config import EngineConfig
from engine.demo.writer import DEMO_CHECKPOINT
from engine.image_prompts.ip_adapter import ImageEncoder
from engine.image_prompts.slots import CLIP_VISION_FILE, CLIP_VISION_FOLDER
from engine.models.loading import SIDECAR_SUFFIX
from engine.models.manager import ModelManager

_RENAMES = {
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
}
_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _to_open_clip(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {new: hf[old] for old, new in _RENAMES.items()}
    out["visual.proj"] = hf["visual_projection.weight"].t().contiguous()
    layers = {int(k.split(".")[3]) for k in hf if k.startswith("vision_model.encoder.layers.")}
    for n in layers:
        src, dst = f"vision_model.encoder.layers.{n}.", f"visual.transformer.resblocks.{n}."
        for old, new in _LAYER.items():
            for kind in ("weight", "bias"):
                out[f"{dst}{new}.{kind}"] = hf[f"{src}{old}.{kind}"]
        for kind in ("weight", "bias"):
            qkv = [hf[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv, dim=0)
    return out


def test_clip_vision_in_the_open_clip_layout_loads_as_the_same_tower(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    folder = demo_models_dir / CLIP_VISION_FOLDER
    original = folder / CLIP_VISION_FILE
    config = folder / (Path(CLIP_VISION_FILE).stem + SIDECAR_SUFFIX)
    hf = load_file(str(original))
    converted = tmp_path / "open_clip_vit.safetensors"
    save_file(_to_open_clip(hf), str(converted))
    shutil.copytree(config, tmp_path / f"open_clip_vit{SIDECAR_SUFFIX}")
    reference = ImageEncoder(original, torch.device("cpu"), torch.float32)
    loaded = ImageEncoder(converted, torch.device("cpu"), torch.float32)
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], hf[k]) for k in hf)
    image = Image.new("RGB", (40, 40), (120, 30, 200))
    assert torch.equal(loaded(image), reference(image))


def test_a_checkpoint_naming_text_projection_as_a_linear_weight_loads(
    demo_models_dir: Path, tmp_path: Path
) -> None:
    source = demo_models_dir / "checkpoints"
    (tmp_path / "checkpoints").mkdir()
    state = load_file(str(source / DEMO_CHECKPOINT))
    old = "conditioner.embedders.1.model.text_projection"
    matrix = state.pop(old)
    state[f"{old}.weight"] = matrix  # the same matrix under the name Fooocus also accepts
    name = "renamed_projection.safetensors"
    save_file(state, str(tmp_path / "checkpoints" / name))
    sidecar = Path(DEMO_CHECKPOINT).stem + SIDECAR_SUFFIX
    shutil.copytree(
        source / sidecar, tmp_path / "checkpoints" / f"renamed_projection{SIDECAR_SUFFIX}"
    )
    manager = ModelManager(EngineConfig(tmp_path, tmp_path), torch.device("cpu"), torch.float32)
    loaded = manager.load_base(name)
    # Fooocus reads it as open_clip's matrix (pooled @ M); a Linear holds M transposed.
    assert torch.equal(loaded.text_encoder_2.text_projection.weight, matrix.t())

"""The demo model set (real formats, deterministic, idempotent); engine imports without Django."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

from engine.demo.writer import DEMO_CHECKPOINT, DEMO_LORAS, create_demo_models


def test_demo_files_are_deterministic_and_idempotent(tmp_path: Path, demo_models_dir: Path) -> None:
    paths = create_demo_models(tmp_path)
    relative = sorted(str(p.relative_to(tmp_path)) for p in paths)
    assert relative == sorted(
        str(p.relative_to(demo_models_dir)) for p in create_demo_models(demo_models_dir)
    )
    for path in paths:
        if path.is_file():
            assert (
                path.read_bytes() == (demo_models_dir / path.relative_to(tmp_path)).read_bytes()
            ), path
    stamps = {p: p.stat().st_mtime_ns for p in paths}
    assert create_demo_models(tmp_path) == paths
    assert {p: p.stat().st_mtime_ns for p in paths} == stamps  # existing files are kept
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary leftovers


def test_demo_checkpoint_uses_the_original_key_names(demo_models_dir: Path) -> None:
    with safe_open(str(demo_models_dir / "checkpoints" / DEMO_CHECKPOINT), framework="pt") as f:
        names = set(f.keys())
        shapes = {n: tuple(f.get_slice(n).get_shape()) for n in names}
    expected = {
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "model.diffusion_model.label_emb.0.0.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.decoder.norm_out.weight",
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
        "conditioner.embedders.1.model.token_embedding.weight",
        "conditioner.embedders.1.model.positional_embedding",
        "conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight",
        "conditioner.embedders.1.model.transformer.resblocks.2.attn.out_proj.bias",
        "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight",
        "conditioner.embedders.1.model.ln_final.bias",
        "conditioner.embedders.1.model.text_projection",
    }
    assert expected <= names
    assert not [
        n for n in names if "down_blocks" in n or ("text_model" in n and "embedders.1" in n)
    ]
    assert shapes["first_stage_model.encoder.mid.attn_1.q.weight"] == (32, 32, 1, 1)
    assert shapes["conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight"] == (
        96,
        32,
    )
    sidecar = demo_models_dir / "checkpoints" / "fooocus_demo_tiny.config"
    for part in (
        "model_index.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "text_encoder_2/config.json",
        "tokenizer/vocab.json",
        "tokenizer_2/merges.txt",
    ):
        assert (sidecar / part).is_file(), part


def test_demo_loras_are_kohya_files(demo_models_dir: Path) -> None:
    for name, modules in DEMO_LORAS.items():
        with safe_open(str(demo_models_dir / "loras" / name), framework="pt") as f:
            keys = set(f.keys())
        assert keys == {
            f"{m}.{part}"
            for m in modules
            for part in ("lora_down.weight", "lora_up.weight", "alpha")
        }


def test_engine_imports_without_django() -> None:
    code = (
        "import sys, engine.models.manager, engine.demo.writer, engine.models.lora; "
        "assert 'django' not in sys.modules, 'django imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert result.returncode == 0, result.stderr[-2000:]

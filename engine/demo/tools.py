"""Demo stand-ins for the tool models, in the real formats: rembg-style ONNX segmenters and a
WD14-style ONNX tagger (the real input/output layouts, tiny graphs), its tag list CSV, and tiny
random transformers folders for BLIP, GroundingDINO and the three SAM sizes.

The ONNX graphs are written with the ``onnx`` package (a runtime requirement, because
``create_demo_model`` runs in production installs too).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from transformers import BertTokenizer as BertTokenizerFast  # the fast one in transformers 5
from transformers import (
    BlipConfig,
    BlipForConditionalGeneration,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    SamConfig,
    SamImageProcessor,
    SamModel,
)

from engine.tools.files import (
    BLIP_FOLDER,
    DESCRIBE_FOLDER,
    DINO_FOLDER,
    REMBG_FOLDER,
    SAM_FOLDERS,
    TAGGER_FILE,
    TAGGER_TAGS_FILE,
    rembg_file,
)
from engine.tools.segment import PREPROCESS
from engine.tools.types import REMBG_MODELS

TOOLS_SEED = 20240601
ONNX_OPSET = 17
TAGGER_SIDE = 32  # the real tagger reads 448x448
# The tag list: ratings (category 9), general tags (0), characters (4), as the real CSV orders them.
DEMO_TAGS: tuple[tuple[str, str], ...] = (
    ("general", "9"),
    ("sensitive", "9"),
    ("1girl", "0"),
    ("solo", "0"),
    ("long_hair", "0"),
    ("smile", "0"),
    ("blue_sky", "0"),
    ("outdoors", "0"),
    ("hatsune_miku", "4"),
    ("kaname_madoka_(cosplay)", "4"),
)
DEMO_WORDS: tuple[str, ...] = (
    "a", "picture", "of", "cat", "dog", "face", "hand", "person", "shirt", "sky", "tree", "house",
    "red", "blue", "green", "on", "in", "the", "with", "and", "is", "sitting", "standing", ".",
)  # fmt: skip
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]")


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="fooocus-demo"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_tiny_segmenter(path: Path, model: str, seed: int) -> None:
    """A rembg-style segmenter: (1, 3, side, side) image in, (1, C, side, side) out through one
    3x3 convolution (C = 4 class logits for u2net_cloth_seg, else 1 sigmoid map)."""
    side = PREPROCESS[model].side
    classes = 4 if model == "u2net_cloth_seg" else 1
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.5, (classes, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, (classes,)).astype(np.float32)
    conv_out = "logits" if classes > 1 else "conv"
    nodes = [helper.make_node("Conv", ["input", "w", "b"], [conv_out], pads=[1, 1, 1, 1])]
    if classes == 1:
        nodes.append(helper.make_node("Sigmoid", ["conv"], ["mask"]))
    graph = helper.make_graph(
        nodes,
        f"demo_{model}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, side, side])],
        [
            helper.make_tensor_value_info(
                "logits" if classes > 1 else "mask", TensorProto.FLOAT, [1, classes, side, side]
            )
        ],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    onnx.save(_model(graph), str(path))


def write_tiny_tagger(path: Path, seed: int, tags: int = len(DEMO_TAGS)) -> None:
    """A WD14-style tagger: ``input_1:0`` (1, side, side, 3) BGR 0..255 in,
    ``predictions_sigmoid`` (1, tags) out, through the channel means and one linear layer."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 4.0, (3, tags)).astype(np.float32)
    bias = rng.normal(0, 1.0, (tags,)).astype(np.float32)
    scale = np.array(1 / 255, dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input_1:0"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["mean", "scale"], ["unit"]),
        helper.make_node("MatMul", ["unit", "w"], ["linear"]),
        helper.make_node("Add", ["linear", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
    ]
    graph = helper.make_graph(
        nodes,
        "demo_wd14_tagger",
        [
            helper.make_tensor_value_info(
                "input_1:0", TensorProto.FLOAT, [1, TAGGER_SIDE, TAGGER_SIDE, 3]
            )
        ],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [1, tags])],
        initializer=[
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(bias, "b"),
            numpy_helper.from_array(scale, "scale"),
        ],
    )
    onnx.save(_model(graph), str(path))


def write_tag_list(path: Path) -> None:
    """The tag list CSV in the real file's columns."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for index, (name, category) in enumerate(DEMO_TAGS):
            writer.writerow([index, name, category, 1000 - index])


def _tokenizer() -> BertTokenizerFast:
    vocab = {token: index for index, token in enumerate((*SPECIAL_TOKENS, *DEMO_WORDS))}
    return BertTokenizerFast(vocab=vocab, do_lower_case=True, bos_token="[DEC]")  # noqa: S106 (a token, not a password)


def write_tiny_blip(folder: Path, seed: int) -> None:
    """A tiny random BLIP captioner folder (config, safetensors weights, BERT tokenizer)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    tokenizer.save_pretrained(folder)
    ids = tokenizer.convert_tokens_to_ids
    config = BlipConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "encoder_hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "max_position_embeddings": 80,
            "bos_token_id": ids("[DEC]"),
            "sep_token_id": ids("[SEP]"),
            "eos_token_id": ids("[SEP]"),
            "pad_token_id": ids("[PAD]"),
        },
        vision_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "image_size": 32,
            "patch_size": 16,
        },
    )
    torch.manual_seed(seed)
    BlipForConditionalGeneration(config).save_pretrained(folder)


def write_tiny_grounding_dino(folder: Path, seed: int) -> None:
    """A tiny random GroundingDINO folder (Swin backbone, BERT text encoder, processor)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 64})
    # The published folders hold the image processor and the tokenizer as separate files.
    image_processor.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = GroundingDinoConfig(
        backbone_config={
            "model_type": "swin",
            "embed_dim": 8,
            "depths": [1, 1],
            "num_heads": [1, 1],
            "window_size": 2,
            "image_size": 64,
            "out_features": ["stage1", "stage2"],
            "out_indices": [1, 2],
        },
        text_config={
            "model_type": "bert",
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "max_position_embeddings": 64,
        },
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=10,
        num_feature_levels=2,
        max_text_len=32,
        encoder_n_points=1,
        decoder_n_points=1,
    )
    torch.manual_seed(seed)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)


def write_tiny_sam(folder: Path, seed: int) -> None:
    """A tiny random SAM folder (64 px input, 16 px masks) with its processor."""
    folder.mkdir(parents=True, exist_ok=True)
    processor = SamImageProcessor(
        size={"longest_edge": 64},
        pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16},
    )
    processor.save_pretrained(folder)
    config = SamConfig(
        vision_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "mlp_dim": 32,
            "image_size": 64,
            "patch_size": 16,
            "output_channels": 16,
            "window_size": 2,
            "global_attn_indexes": [0],
            "num_pos_feats": 8,
        },
        prompt_encoder_config={
            "hidden_size": 16,
            "image_size": 64,
            "patch_size": 16,
            "mask_input_channels": 4,
        },
        mask_decoder_config={
            "hidden_size": 16,
            "mlp_dim": 32,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 16,
            "num_hidden_layers": 2,
        },
    )
    torch.manual_seed(seed)
    SamModel(config).save_pretrained(folder)


def tool_writers(models_dir: Path) -> dict[Path, Callable[[Path], None]]:
    """Every demo tool file or folder under ``models_dir`` and the function that writes it."""
    writers: dict[Path, Callable[[Path], None]] = {
        models_dir / DESCRIBE_FOLDER / TAGGER_FILE: partial(write_tiny_tagger, seed=TOOLS_SEED),
        models_dir / DESCRIBE_FOLDER / TAGGER_TAGS_FILE: write_tag_list,
        models_dir / BLIP_FOLDER: partial(write_tiny_blip, seed=TOOLS_SEED + 1),
        models_dir / DINO_FOLDER: partial(write_tiny_grounding_dino, seed=TOOLS_SEED + 2),
    }
    for index, model in enumerate(REMBG_MODELS):
        writers[models_dir / REMBG_FOLDER / rembg_file(model)] = partial(
            write_tiny_segmenter, model=model, seed=TOOLS_SEED + 10 + index
        )
    for index, folder in enumerate(SAM_FOLDERS.values()):
        writers[models_dir / folder] = partial(write_tiny_sam, seed=TOOLS_SEED + 20 + index)
    return writers

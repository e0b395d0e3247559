"""Read SDXL model files from disk: single-file checkpoints, diffusers folders and VAE files.

Single-file checkpoints are converted with our own key mapping (:mod:`engine.models.checkpoint_keys`)
rather than ``from_single_file``: diffusers picks a text encoder's source weights by comparing
embedding widths, which silently mixes up CLIP-L and CLIP-G when both are equally wide (as in the
demo model), and it loads CLIP weights with ``strict=False``. Here every parameter the model
expects is fetched by name, a missing one is a clear error, and nothing touches the network: the
configs come from a local folder (the checkpoint's sidecar ``<stem>.config/`` or the shipped
``engine/configs/sdxl_base``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import safe_open
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from engine.config import SIDECAR_SUFFIX
from engine.models import checkpoint_keys as keys
from engine.models.components import REFINER_CONFIG_DIR, SDXL_CONFIG_DIR, SDXLComponents


class CheckpointFormatError(ValueError):
    """The file is not a model of the expected architecture, or not in a format we read."""


class _Source:
    """Read-only, lazily loaded view of a weights file's tensors by name."""

    def __init__(self, names: set[str], get: Callable[[str], torch.Tensor]) -> None:
        self.names = names
        self._get = get

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._get(name)


@contextmanager
def open_weights(path: Path) -> Iterator[_Source]:
    """Open a ``.safetensors`` file lazily, or a pickled torch file (``weights_only``) in memory."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            yield _Source(set(handle.keys()), handle.get_tensor)
        return
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]  # Lightning-era .ckpt files wrap the weights
    if not isinstance(data, Mapping):
        raise CheckpointFormatError(f"{path.name} holds no state dict")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    yield _Source(set(tensors), tensors.__getitem__)


def sidecar_config_dir(path: Path) -> Path | None:
    """The ``<stem>.config/`` folder beside a model file, when it exists."""
    candidate = path.with_name(path.stem + SIDECAR_SUFFIX)
    return candidate if candidate.is_dir() else None


def fill_module(
    module: torch.nn.Module,
    fetch: Callable[[str], torch.Tensor],
    dtype: torch.dtype,
    what: str,
) -> None:
    """Load every parameter of a meta-device ``module`` from ``fetch`` (strict, shapes checked).

    Building on the meta device skips random initialisation, which takes seconds for SDXL.
    """
    state: dict[str, torch.Tensor] = {}
    for name, expected in module.state_dict().items():
        try:
            tensor = fetch(name)
        except KeyError as exc:
            raise CheckpointFormatError(f"{what}: no weight for {name} ({exc.args[0]})") from None
        if tensor.shape != expected.shape:
            # LDM files store the VAE attention matrices as 1x1 convolutions.
            if tensor.numel() != expected.numel():
                raise CheckpointFormatError(
                    f"{what}: {name} has shape {tuple(tensor.shape)}, "
                    f"the model needs {tuple(expected.shape)}"
                )
            tensor = tensor.reshape(expected.shape)
        state[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    module.load_state_dict(state, strict=True, assign=True)
    for name, buffer in module.named_buffers():
        if buffer.is_meta:
            # CLIP's position_ids is a non-persistent buffer, so no file holds it.
            if not name.endswith("position_ids"):
                raise RuntimeError(f"{what}: buffer {name} was not initialised")
            owner = module.get_submodule(name.rpartition(".")[0])
            owner.register_buffer(
                "position_ids", torch.arange(buffer.shape[-1]).expand(1, -1), persistent=False
            )
    module.eval().requires_grad_(False)


def _load_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def _get(source: _Source, name: str) -> torch.Tensor:
    if name not in source:
        raise KeyError(name)
    return source[name]


def _clip_g_fetch(
    source: _Source, hidden: int, prefix: str = keys.CLIP_G_PREFIX
) -> Callable[[str], torch.Tensor]:
    def fetch(name: str) -> torch.Tensor:
        original, chunk = keys.clip_g_name(name)
        if original == "text_projection":
            # open_clip's matrix (pooled @ M); a Linear stores M transposed. Some checkpoints name
            # it ``text_projection.weight``: Fooocus maps that key onto the same parameter and
            # reads it the same way (no transpose; its own key replacement, supported_models.py),
            # so it is M here too.
            stored = prefix + original
            if stored not in source:
                stored = prefix + keys.TEXT_PROJECTION_LINEAR
            return _get(source, stored).t()
        tensor = _get(source, prefix + original)
        if chunk is not None:
            return tensor[chunk * hidden : (chunk + 1) * hidden]
        return tensor

    return fetch


def load_vae_weights(
    source: _Source, config: Mapping[str, Any], dtype: torch.dtype, what: str
) -> AutoencoderKL:
    """An AutoencoderKL from LDM-named (prefixed or not) or diffusers-named weights."""
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
    diffusers_names = any(n.startswith("encoder.down_blocks.") for n in source.names)
    prefix = keys.VAE_PREFIX if any(n.startswith(keys.VAE_PREFIX) for n in source.names) else ""

    def fetch(name: str) -> torch.Tensor:
        if diffusers_names:
            return _get(source, name)
        return _get(source, prefix + keys.vae_name_to_ldm(name, config))

    fill_module(vae, fetch, dtype, what)
    return vae


def load_single_file(
    path: Path, config_dir: Path, dtype: torch.dtype, vae_dtype: torch.dtype
) -> SDXLComponents:
    """Load an SDXL single-file checkpoint (SGM/LDM/open_clip key names) on the CPU.

    ``config_dir`` is a diffusers-format config folder (component configs and tokenizers).
    Raises CheckpointFormatError when the file is not an SDXL-architecture checkpoint.
    """
    what = path.name
    with open_weights(path) as source:
        if is_official_refiner(source.names):
            return _load_refiner(path, source, dtype, vae_dtype)
        unet_config = _load_json(config_dir / "unet" / "config.json")
        vae_config = _load_json(config_dir / "vae" / "config.json")
        te1_config = CLIPTextConfig.from_pretrained(
            config_dir / "text_encoder", local_files_only=True
        )
        te2_config = CLIPTextConfig.from_pretrained(
            config_dir / "text_encoder_2", local_files_only=True
        )
        if not any(n.startswith(keys.CLIP_G_PREFIX) for n in source.names):
            raise CheckpointFormatError(
                f"{what} is not an SDXL checkpoint (no {keys.CLIP_G_PREFIX}* weights); "
                "only SDXL-architecture base models are supported"
            )
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(unet_config)
            text_encoder = CLIPTextModel(te1_config)
            text_encoder_2 = CLIPTextModelWithProjection(te2_config)
        fill_module(
            unet,
            lambda n: _get(source, keys.UNET_PREFIX + keys.unet_name_to_sgm(n, unet_config)),
            dtype,
            what,
        )
        fill_module(text_encoder, lambda n: _get(source, keys.clip_l_name(n)), dtype, what)
        fill_module(text_encoder_2, _clip_g_fetch(source, te2_config.hidden_size), dtype, what)
        vae = load_vae_weights(source, vae_config, vae_dtype, what)
    tokenizer, tokenizer_2 = load_tokenizers(config_dir)
    return SDXLComponents(
        path.name, unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2
    )


def is_official_refiner(names: set[str]) -> bool:
    """An SDXL-refiner-type file: open_clip weights as embedder 0 and no second embedder."""
    return any(n.startswith(keys.REFINER_CLIP_G_PREFIX) for n in names) and not any(
        n.startswith(keys.CLIP_G_PREFIX) for n in names
    )


def _load_refiner(
    path: Path, source: _Source, dtype: torch.dtype, vae_dtype: torch.dtype
) -> SDXLComponents:
    """The official SDXL refiner's UNet, VAE and CLIP-G; configs from its sidecar folder or the
    shipped ``engine/configs/sdxl_refiner``."""
    what = path.name
    config_dir = sidecar_config_dir(path) or REFINER_CONFIG_DIR
    unet_config = _load_json(config_dir / "unet" / "config.json")
    vae_config = _load_json(config_dir / "vae" / "config.json")
    te2_config = CLIPTextConfig.from_pretrained(
        config_dir / "text_encoder_2", local_files_only=True
    )
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        text_encoder_2 = CLIPTextModelWithProjection(te2_config)
    fill_module(
        unet,
        lambda n: _get(source, keys.UNET_PREFIX + keys.unet_name_to_sgm(n, unet_config)),
        dtype,
        what,
    )
    fetch = _clip_g_fetch(source, te2_config.hidden_size, keys.REFINER_CLIP_G_PREFIX)
    fill_module(text_encoder_2, fetch, dtype, what)
    vae = load_vae_weights(source, vae_config, vae_dtype, what)
    tokenizer, tokenizer_2 = load_tokenizers(SDXL_CONFIG_DIR)
    return SDXLComponents(path.name, unet, vae, None, text_encoder_2, tokenizer, tokenizer_2)


def load_tokenizers(folder: Path) -> tuple[CLIPTokenizer, CLIPTokenizer]:
    """The two CLIP tokenizers of a diffusers-format folder."""
    return (
        CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True),
        CLIPTokenizer.from_pretrained(folder / "tokenizer_2", local_files_only=True),
    )


def _variant(folder: Path) -> str | None:
    """``"fp16"`` when a component folder holds only fp16-variant weights (common on the Hub)."""
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    if any(".fp16." in n for n in names) and not any(
        n.endswith((".safetensors", ".bin")) and ".fp16." not in n for n in names
    ):
        return "fp16"
    return None


def load_diffusers_folder(path: Path, dtype: torch.dtype, vae_dtype: torch.dtype) -> SDXLComponents:
    """Load a diffusers-format SDXL folder (``model_index.json`` and subfolders) on the CPU."""
    index = _load_json(path / "model_index.json")
    if "text_encoder_2" not in index:
        raise CheckpointFormatError(
            f"{path.name} is not an SDXL model folder (no text_encoder_2); "
            "only SDXL-architecture base models are supported"
        )
    unet = UNet2DConditionModel.from_pretrained(
        path,
        subfolder="unet",
        torch_dtype=dtype,
        local_files_only=True,
        variant=_variant(path / "unet"),
    )
    vae = AutoencoderKL.from_pretrained(
        path,
        subfolder="vae",
        torch_dtype=vae_dtype,
        local_files_only=True,
        variant=_variant(path / "vae"),
    )
    text_encoder = CLIPTextModel.from_pretrained(
        path / "text_encoder",
        dtype=dtype,
        local_files_only=True,
        variant=_variant(path / "text_encoder"),
    )
    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
        path / "text_encoder_2",
        dtype=dtype,
        local_files_only=True,
        variant=_variant(path / "text_encoder_2"),
    )
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval().requires_grad_(False)
    tokenizer, tokenizer_2 = load_tokenizers(path)
    return SDXLComponents(
        path.name, unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2
    )


def load_checkpoint(path: Path, dtype: torch.dtype, vae_dtype: torch.dtype) -> SDXLComponents:
    """Load a base model from a single file or a diffusers folder, on the CPU."""
    if path.is_dir():
        return load_diffusers_folder(path, dtype, vae_dtype)
    return load_single_file(path, sidecar_config_dir(path) or SDXL_CONFIG_DIR, dtype, vae_dtype)


def load_vae(path: Path, default_config: Mapping[str, Any], dtype: torch.dtype) -> AutoencoderKL:
    """Load a standalone VAE: a diffusers folder, or a single file (LDM or diffusers key names).

    A single file's architecture comes from its sidecar ``<stem>.config/config.json`` when present,
    else ``default_config`` (the base model's VAE config: a VAE must fit its base model anyway).
    """
    if path.is_dir():
        vae = AutoencoderKL.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
        return vae.eval().requires_grad_(False)
    sidecar = sidecar_config_dir(path)
    config = _load_json(sidecar / "config.json") if sidecar else dict(default_config)
    with open_weights(path) as source:
        return load_vae_weights(source, config, dtype, path.name)

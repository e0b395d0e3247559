"""LoRA files merged into the model weights, the way Fooocus applies them.

A LoRA file holds low-rank factors per module; the merged weight is
``W + sum(weight_i * scale_i * up_i @ down_i)`` with ``scale = alpha / rank``. We patch the weights
in place and keep a copy of each patched tensor's original, so switching LoRA sets between tasks
only restores and re-patches those tensors, and the empty set gives back the exact original bits.

Key names come in several dialects; all resolve to the same modules:

* kohya: ``lora_unet_<module path with "_">.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``,
  the UNet path in diffusers form (``down_blocks_1_attentions_0_...``) or SGM form
  (``input_blocks_4_1_...``); ``lora_te1_*`` / ``lora_te2_*`` for the two text encoders;
  LoHa factors (``.hada_w1_a`` ...) are read too.
* diffusers / peft: ``unet.<module>.lora.down.weight``, ``.lora_A.weight`` / ``.lora_B.weight``,
  ``.lora_linear_layer.down.weight``, the old ``.processor.to_q_lora.down.weight``;
  ``text_encoder.*`` / ``text_encoder_2.*``.

Anything that does not resolve (a module the model lacks, a shape that does not fit, a factor
type we do not implement) is an :class:`EngineInputError` naming the file: a LoRA made for
another architecture must fail loudly, not be half applied.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine.models.checkpoint_keys import unet_name_to_sgm
from engine.models.components import SDXLComponents
from engine.types import EngineInputError

_PARTS: dict[str, str] = {
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".lora.down.weight": "down",
    ".lora.up.weight": "up",
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora_A.default.weight": "down",
    ".lora_B.default.weight": "up",
    ".lora_linear_layer.down.weight": "down",
    ".lora_linear_layer.up.weight": "up",
    ".alpha": "alpha",
    ".hada_w1_a": "w1a",
    ".hada_w1_b": "w1b",
    ".hada_w2_a": "w2a",
    ".hada_w2_b": "w2b",
}
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.")
_COMPONENTS = {"unet": "unet", "text_encoder": "te1", "text_encoder_2": "te2"}


def _underscored(name: str) -> str:
    return name.replace(".", "_")


class LoraTargets:
    """Every module of a model a LoRA may patch, under each name a LoRA file may use for it."""

    def __init__(self, components: SDXLComponents) -> None:
        # The official refiner has no CLIP-L; its LoRA keys then simply find no module.
        self._modules: dict[str, torch.nn.Module] = {
            attr: getattr(components, attr)
            for attr in _COMPONENTS
            if getattr(components, attr) is not None
        }
        self._index: dict[str, tuple[str, str]] = {}
        unet_config = components.unet.config
        for attr, module in self._modules.items():
            for name, sub in module.named_modules():
                weight = getattr(sub, "weight", None)
                if not isinstance(weight, torch.nn.Parameter) or weight.ndim < 2:
                    continue
                for alias in self._aliases(attr, name, unet_config):
                    self._index[alias] = (attr, name)

    @staticmethod
    def _aliases(attr: str, name: str, unet_config: Mapping[str, object]) -> list[str]:
        if attr == "unet":
            aliases = [f"lora_unet_{_underscored(name)}", f"unet.{name}"]
            try:
                sgm = unet_name_to_sgm(name, unet_config)
            except KeyError:
                return aliases
            return [*aliases, f"lora_unet_{_underscored(sgm)}", f"diffusion_model.{sgm}"]
        # transformers >= 5.6 drops CLIPTextModel's ``text_model.`` level; LoRA files keep it.
        full = (
            name
            if name.startswith("text_model.") or name == "text_projection"
            else f"text_model.{name}"
        )
        short = full.removeprefix("text_model.")
        return [
            f"lora_{_COMPONENTS[attr]}_{_underscored(full)}",
            f"{attr}.{full}",
            f"{attr}.{short}",
        ]

    def lookup(self, key: str) -> tuple[str, str]:
        """``(component attribute, module name)`` for a LoRA module key; KeyError if none."""
        return self._index[key]

    def weight(self, attr: str, module_name: str) -> torch.nn.Parameter:
        """The weight parameter of a module."""
        weight = self._modules[attr].get_submodule(module_name).weight
        assert isinstance(weight, torch.nn.Parameter)
        return weight


@dataclass(frozen=True)
class LoraDelta:
    """One module's factors from one file; :meth:`compute` gives the (unweighted) weight delta."""

    attr: str
    module: str
    factors: dict[str, torch.Tensor]
    scale: float

    def compute(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """``scale * up @ down`` (or the LoHa product) in float32, shaped like the weight."""
        f = {k: v.to(device, torch.float32) for k, v in self.factors.items()}
        if "up" in f:
            delta = f["up"].flatten(1) @ f["down"].flatten(1)
        else:
            delta = (f["w1a"] @ f["w1b"]) * (f["w2a"] @ f["w2b"])
        return (delta * self.scale).reshape(shape)

    def output_numel(self) -> int:
        """How many elements the delta has, from the factor shapes alone."""
        f = self.factors
        if "up" in f:
            return int(f["up"].shape[0]) * int(f["down"][0].numel())
        return int(f["w1a"].shape[0]) * int(f["w1b"].shape[1])


def _split_key(key: str) -> tuple[str, str] | None:
    key = _PROCESSOR.sub(
        lambda m: f".{m.group(1)}{'.0' if m.group(1) == 'to_out' else ''}.lora.", key
    )
    for suffix, part in _PARTS.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


def parse_lora(
    state: Mapping[str, torch.Tensor], targets: LoraTargets, filename: str
) -> list[LoraDelta]:
    """Resolve a LoRA state dict against a model. Raises EngineInputError naming ``filename``."""

    def fail(problem: str) -> EngineInputError:
        return EngineInputError("loras", f"LoRA {filename} does not fit this model: {problem}")

    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        split = _split_key(key)
        if split is None:
            raise fail(f"unsupported key {key} (only LoRA and LoHa factors are implemented)")
        grouped.setdefault(split[0], {})[split[1]] = tensor
    if not grouped:
        raise fail("the file holds no LoRA weights")

    deltas = []
    for module_key, parts in grouped.items():
        try:
            attr, module = targets.lookup(module_key)
        except KeyError:
            raise fail(f"no module {module_key} (made for another model architecture?)") from None
        alpha = parts.pop("alpha", None)
        if set(parts) == {"up", "down"}:
            rank = parts["down"].shape[0]
            if parts["up"].shape[1] != rank:
                raise fail(f"{module_key}: up and down factors disagree on the rank")
        elif set(parts) == {"w1a", "w1b", "w2a", "w2b"}:
            rank = parts["w1b"].shape[0]
        else:
            raise fail(f"{module_key}: incomplete factors {sorted(parts)}")
        scale = float(alpha) / rank if alpha is not None else 1.0
        delta = LoraDelta(attr, module, parts, scale)
        weight = targets.weight(attr, module)
        if delta.output_numel() != weight.numel():
            raise fail(
                f"{module_key}: delta does not fit the weight of shape {tuple(weight.shape)}"
            )
        deltas.append(delta)
    return deltas


class LoraPatcher:
    """Merges a set of LoRAs into one model's weights and takes them out again."""

    def __init__(self, components: SDXLComponents) -> None:
        self.targets = LoraTargets(components)
        # Originals live on the CPU: a full-UNet LoRA would otherwise double its GPU memory.
        self._originals: dict[tuple[str, str], torch.Tensor] = {}
        self._applied: tuple[tuple[str, int, float], ...] = ()

    @property
    def patched(self) -> int:
        """How many weight tensors currently differ from the loaded model."""
        return len(self._originals)

    def apply(self, loras: Sequence[tuple[Path, float]]) -> bool:
        """Make the model's weights ``original + sum(LoRA deltas)`` for this set; True if changed.

        Applying the set already applied does nothing; weight-0 entries are ignored; the empty
        set restores the original weights exactly. Files are read and checked before any weight
        changes, so a bad file leaves the model as it was.
        """
        active = [(p, float(w)) for p, w in loras if float(w) != 0.0]
        signature = tuple((str(p), p.stat().st_mtime_ns, w) for p, w in active)
        if signature == self._applied:
            return False
        by_param: dict[tuple[str, str], list[tuple[LoraDelta, float]]] = {}
        for path, weight in active:
            for delta in parse_lora(load_file(str(path)), self.targets, path.name):
                by_param.setdefault((delta.attr, delta.module), []).append((delta, weight))

        with torch.no_grad():
            for key in [k for k in self._originals if k not in by_param]:
                self.targets.weight(*key).copy_(self._originals.pop(key))
            for key, items in by_param.items():
                param = self.targets.weight(*key)
                if key not in self._originals:
                    self._originals[key] = param.detach().to("cpu", copy=True)
                # copy=True: on the CPU .to() would otherwise alias the saved original.
                merged = self._originals[key].to(param.device, torch.float32, copy=True)
                for delta, weight in items:
                    merged += delta.compute(param.shape, param.device) * weight
                param.copy_(merged.to(param.dtype))
        self._applied = signature
        return True

"""LoRA files merged into the model weights, the way Fooocus applies them.

A LoRA file holds, per module, factors of a weight delta; the merged weight is
``W + sum(weight_i * scale_i * delta_i)``. We patch the weights in place and keep a copy of each
patched tensor's original, so switching LoRA sets between tasks only restores and re-patches those
tensors, and the empty set gives back the exact original bits.

The factor types are those Fooocus merges (its ``modules/lora.py`` matching and the weight maths of
``modules/patch.py``), named as LyCORIS and kohya write them:

* LoRA / LoCon: ``.lora_up.weight`` [out, r] @ ``.lora_down.weight`` [r, in(, kh, kw)], with an
  optional Tucker core ``.lora_mid.weight`` [r, r, kh, kw] (delta = up x mid x down);
  scale = alpha / r.
* LoHa: (``hada_w1_a`` @ ``hada_w1_b``) * (``hada_w2_a`` @ ``hada_w2_b``), or with Tucker cores
  ``hada_t1``/``hada_t2`` (each factor einsum('ijkl,jr,ip->prkl', t, w_b, w_a)); scale = alpha /
  rank of ``hada_w1_b``.
* LoKr: kron(w1, w2), each given whole (``lokr_w1``/``lokr_w2``) or as ``_a`` @ ``_b`` factors,
  w2 optionally with a Tucker core ``lokr_t2``; scale = alpha / rank of the factored part (w2's
  when both are), 1 when neither is.
* Full differences: ``.diff`` (weight) and ``.diff_b`` (bias), and norm-layer weights ``.w_norm``
  / ``.b_norm``: added as they are, times the LoRA's weight.

The ``.alpha`` tensor gives alpha; a PEFT-format file (``lora_A``/``lora_B``) instead keeps
``lora_alpha`` (and ``alpha_pattern``, ``rank_pattern``, ``use_rslora``) in the safetensors metadata
under ``lora_adapter_metadata``, as diffusers writes and reads it; without either, scale is 1.

Key names come in several dialects; all resolve to the same modules:

* kohya: ``lora_unet_<module path with "_">.<factor>``, the UNet path in diffusers form
  (``down_blocks_1_attentions_0_...``) or SGM form (``input_blocks_4_1_...``); ``lora_te1_*`` /
  ``lora_te2_*`` for the two text encoders, and SD1-style ``lora_te_*`` for CLIP-L (the only text
  encoder of the official refiner, CLIP-G, when there is no CLIP-L), as Fooocus maps them.
* diffusers / peft: ``unet.<module>.lora.down.weight``, ``.lora_A.weight`` / ``.lora_B.weight``,
  ``.lora_linear_layer.down.weight``, the old ``.processor.to_q_lora.down.weight`` (also without
  the ``unet.`` prefix, as old diffusers files have it); ``text_encoder.*`` / ``text_encoder_2.*``.

A file naming one module twice (say under its kohya and its diffusers name) is merged once: as in
Fooocus, where the later name of its key map wins, the diffusers name is kept over the kohya one.

Anything that does not resolve (a module the model lacks, a shape that does not fit, a factor type
we do not implement: DoRA, GLoRA) is an :class:`EngineInputError` naming the file and, for a
format, the format: a LoRA made for another architecture must fail loudly, not be half applied.
(Fooocus skips a file with more than 12 unmatched keys silently and merges the rest otherwise.)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from engine.config import LORA_SUFFIXES
from engine.models.checkpoint_keys import unet_name_to_sgm
from engine.models.components import SDXLComponents
from engine.types import EngineInputError

PEFT_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY

_PARTS: dict[str, str] = {
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".lora_mid.weight": "mid",
    ".lora.down.weight": "down",
    ".lora.up.weight": "up",
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora_A.default.weight": "down",
    ".lora_B.default.weight": "up",
    ".lora_linear_layer.down.weight": "down",
    ".lora_linear_layer.up.weight": "up",
    ".alpha": "alpha",
    ".hada_w1_a": "hada_w1_a",
    ".hada_w1_b": "hada_w1_b",
    ".hada_w2_a": "hada_w2_a",
    ".hada_w2_b": "hada_w2_b",
    ".hada_t1": "hada_t1",
    ".hada_t2": "hada_t2",
    ".lokr_w1": "lokr_w1",
    ".lokr_w2": "lokr_w2",
    ".lokr_w1_a": "lokr_w1_a",
    ".lokr_w1_b": "lokr_w1_b",
    ".lokr_w2_a": "lokr_w2_a",
    ".lokr_w2_b": "lokr_w2_b",
    ".lokr_t2": "lokr_t2",
    ".diff": "diff",
    ".diff_b": "diff_b",
    ".w_norm": "w_norm",
    ".b_norm": "b_norm",
    # Formats recognised only to be refused by name.
    ".dora_scale": "dora",
    ".lora_magnitude_vector": "dora",
    ".lora_magnitude_vector.weight": "dora",
    ".lora_magnitude_vector.default.weight": "dora",
    ".a1.weight": "glora",
    ".a2.weight": "glora",
    ".b1.weight": "glora",
    ".b2.weight": "glora",
}
# Longest first, so ".lora_magnitude_vector.weight" is not read as ".weight" of something shorter.
_SUFFIXES = sorted(_PARTS, key=len, reverse=True)
_REFUSED = {
    "dora": "DoRA (weight-decomposed LoRA, '.dora_scale' / 'lora_magnitude_vector')",
    "glora": "GLoRA ('.a1/.a2/.b1/.b2' factors)",
}
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.")
_COMPONENTS = {"unet": "unet", "text_encoder": "te1", "text_encoder_2": "te2"}


def _underscored(name: str) -> str:
    return name.replace(".", "_")


def read_lora_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a LoRA file and its safetensors metadata (empty for pickled files).

    ``.safetensors`` is read with safetensors; ``.pt``, ``.pth``, ``.bin`` and ``.ckpt`` with
    ``torch.load(weights_only=True)`` (a ``state_dict`` wrapper is unwrapped). Anything else, or a
    file that does not read, is an :class:`EngineInputError` naming the file.
    """

    def fail(problem: str) -> EngineInputError:
        return EngineInputError("loras", f"LoRA {path.name} {problem}")

    suffix = path.suffix.lower()
    if suffix not in LORA_SUFFIXES:
        raise fail(f"is not a LoRA file format we read ({', '.join(LORA_SUFFIXES)})")
    if suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
                metadata = dict(handle.metadata() or {})
        except Exception as error:
            raise fail(f"is not a readable safetensors file ({error})") from error
        return state, metadata
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise fail(f"is not a weights-only torch file ({type(error).__name__})") from error
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise fail("holds no state dict")
    return {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}, {}


@dataclass(frozen=True)
class _Target:
    attr: str
    module: str
    rank: int  # position of the alias in Fooocus's key-map order: a later one wins a duplicate


class LoraTargets:
    """Every module of a model a LoRA may patch, under each name a LoRA file may use for it."""

    def __init__(self, components: SDXLComponents) -> None:
        # The official refiner has no CLIP-L; its LoRA keys then simply find no module.
        self._modules: dict[str, torch.nn.Module] = {
            attr: getattr(components, attr)
            for attr in _COMPONENTS
            if getattr(components, attr) is not None
        }
        self._index: dict[str, _Target] = {}
        unet_config = components.unet.config
        te1_present = "text_encoder" in self._modules
        for attr, module in self._modules.items():
            for name, sub in module.named_modules():
                weight = getattr(sub, "weight", None)
                if not isinstance(weight, torch.nn.Parameter):
                    continue
                for rank, alias in enumerate(self._aliases(attr, name, unet_config, te1_present)):
                    self._index.setdefault(alias, _Target(attr, name, rank))

    @staticmethod
    def _aliases(
        attr: str, name: str, unet_config: Mapping[str, object], te1_present: bool
    ) -> list[str]:
        if attr == "unet":
            try:
                sgm: str | None = unet_name_to_sgm(name, unet_config)
            except KeyError:
                sgm = None
            aliases = [f"lora_unet_{_underscored(sgm)}"] if sgm is not None else []
            aliases += [f"lora_unet_{_underscored(name)}", name, f"unet.{name}"]
            return aliases + ([f"diffusion_model.{sgm}"] if sgm is not None else [])
        # transformers >= 5.6 drops CLIPTextModel's ``text_model.`` level; LoRA files keep it.
        full = (
            name
            if name.startswith("text_model.") or name == "text_projection"
            else f"text_model.{name}"
        )
        short = full.removeprefix("text_model.")
        kohya = _underscored(full)
        if attr == "text_encoder":
            return [
                f"lora_te_{kohya}",
                f"lora_te1_{kohya}",
                f"text_encoder.{full}",
                f"text_encoder.{short}",
            ]
        if not te1_present:  # the refiner: SD1-style and CLIP-L names reach CLIP-G, as in Fooocus
            return [
                f"lora_te_{kohya}",
                f"lora_te2_{kohya}",
                f"text_encoder.{full}",
                f"text_encoder_2.{full}",
                f"text_encoder_2.{short}",
            ]
        return [f"lora_te2_{kohya}", f"text_encoder_2.{full}", f"text_encoder_2.{short}"]

    def lookup(self, key: str) -> tuple[str, str]:
        """``(component attribute, module name)`` for a LoRA module key; KeyError if none."""
        target = self._index[key]
        return target.attr, target.module

    def alias_rank(self, key: str) -> int:
        """Where ``key`` stands among its module's names (a higher one wins a duplicate)."""
        return self._index[key].rank

    def weight(self, attr: str, module_name: str) -> torch.nn.Parameter:
        """The weight parameter of a module."""
        return self.parameter(attr, module_name, "weight")

    def parameter(self, attr: str, module_name: str, which: str) -> torch.nn.Parameter:
        """The ``weight`` or ``bias`` parameter of a module; KeyError if it has none."""
        param = getattr(self._modules[attr].get_submodule(module_name), which, None)
        if not isinstance(param, torch.nn.Parameter):
            raise KeyError(f"{module_name}.{which}")
        return param


def _f32(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor.to(device, torch.float32)


def _tucker(core: torch.Tensor, w_b: torch.Tensor, w_a: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ijkl,jr,ip->prkl", core, w_b, w_a).contiguous()


@dataclass(frozen=True)
class LoraDelta:
    """One parameter's factors from one file; :meth:`compute` gives the (unweighted) delta.

    ``kind`` is ``lora``, ``loha``, ``lokr`` or ``diff``; ``param`` is ``weight`` or ``bias``.
    """

    attr: str
    module: str
    factors: dict[str, torch.Tensor]
    scale: float
    kind: str = "lora"
    param: str = "weight"

    def compute(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """``scale`` times the factor product in float32, shaped like the parameter."""
        f = {k: _f32(v, device) for k, v in self.factors.items()}
        if self.kind == "diff":
            delta = f["diff"]
        elif self.kind == "lora":
            down = f["down"]
            if "mid" in f:
                delta = torch.einsum(
                    "or,rskl,si->oikl", f["up"].flatten(1), f["mid"], down.flatten(1)
                )
            else:
                delta = f["up"].flatten(1) @ down.flatten(1)
        elif self.kind == "loha":
            if "hada_t1" in f:
                m1 = _tucker(f["hada_t1"], f["hada_w1_b"], f["hada_w1_a"])
                m2 = _tucker(f["hada_t2"], f["hada_w2_b"], f["hada_w2_a"])
            else:
                m1 = f["hada_w1_a"] @ f["hada_w1_b"]
                m2 = f["hada_w2_a"] @ f["hada_w2_b"]
            delta = m1 * m2
        else:
            w1, w2 = _lokr_factors(f)
            if w2.dim() == 4:
                w1 = w1[:, :, None, None]
            delta = torch.kron(w1, w2)
        return (delta * self.scale).reshape(shape)

    def output_numel(self) -> int:
        """How many elements the delta has, from the factor shapes alone."""
        f = self.factors
        if self.kind == "diff":
            return f["diff"].numel()
        if self.kind == "lora":
            per_out = (
                f["down"][0].numel()
                if "mid" not in f
                else f["down"].shape[1] * f["mid"][0, 0].numel()
            )
            return int(f["up"].shape[0]) * int(per_out)
        if self.kind == "loha":
            if "hada_t1" in f:
                return int(
                    f["hada_w1_a"].shape[1] * f["hada_w1_b"].shape[1] * f["hada_t1"][0, 0].numel()
                )
            return int(f["hada_w1_a"].shape[0] * f["hada_w1_b"].shape[1])
        w1 = (
            f["lokr_w1"].numel()
            if "lokr_w1" in f
            else f["lokr_w1_a"].shape[0] * f["lokr_w1_b"].shape[1]
        )
        if "lokr_w2" in f:
            w2 = f["lokr_w2"].numel()
        elif "lokr_t2" in f:
            w2 = f["lokr_w2_a"].shape[1] * f["lokr_w2_b"].shape[1] * f["lokr_t2"][0, 0].numel()
        else:
            w2 = f["lokr_w2_a"].shape[0] * f["lokr_w2_b"].shape[1]
        return int(w1 * w2)


def _lokr_factors(f: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
    if "lokr_w2" in f:
        w2 = f["lokr_w2"]
    elif "lokr_t2" in f:
        w2 = _tucker(f["lokr_t2"], f["lokr_w2_b"], f["lokr_w2_a"])
    else:
        w2 = f["lokr_w2_a"] @ f["lokr_w2_b"]
    return w1, w2


def _split_key(key: str) -> tuple[str, str] | None:
    key = _PROCESSOR.sub(
        lambda m: f".{m.group(1)}{'.0' if m.group(1) == 'to_out' else ''}.lora.", key
    )
    for suffix in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], _PARTS[suffix]
    return None


_LORA_KINDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # kind: (required parts, optional parts)
    "lora": (frozenset({"up", "down"}), frozenset({"mid"})),
    "loha": (
        frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}),
        frozenset({"hada_t1", "hada_t2"}),
    ),
}


def _peft_config(metadata: Mapping[str, str], module_key: str) -> dict[str, Any] | None:
    """The PEFT LoraConfig fields diffusers stored for the component of ``module_key``."""
    raw = metadata.get(PEFT_METADATA_KEY)
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    component = module_key.split(".", 1)[0]
    prefixed = {
        k.removeprefix(f"{component}."): v
        for k, v in config.items()
        if k.startswith(f"{component}.")
    }
    return prefixed or {k: v for k, v in config.items() if "." not in k} or None


def _pattern_value(patterns: object, module_name: str) -> object:
    """PEFT's rank/alpha pattern lookup: the first pattern matching the end of the name."""
    if not isinstance(patterns, Mapping):
        return None
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module_name):
            return value
    return None


def _peft_scale(config: Mapping[str, Any], module_key: str, rank: int) -> float | None:
    module_name = module_key.split(".", 1)[1] if "." in module_key else module_key
    alpha = _pattern_value(config.get("alpha_pattern"), module_name)
    if alpha is None:
        alpha = config.get("lora_alpha")
    if not isinstance(alpha, int | float):
        return None
    return float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def parse_lora(
    state: Mapping[str, torch.Tensor],
    targets: LoraTargets,
    filename: str,
    metadata: Mapping[str, str] | None = None,
) -> list[LoraDelta]:
    """Resolve a LoRA state dict against a model. Raises EngineInputError naming ``filename``."""

    def fail(problem: str) -> EngineInputError:
        return EngineInputError("loras", f"LoRA {filename} does not fit this model: {problem}")

    metadata = metadata or {}
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        split = _split_key(key)
        if split is None:
            raise fail(f"unsupported key {key} (not a LoRA, LoHa, LoKr or diff factor)")
        if split[1] in _REFUSED:
            raise EngineInputError(
                "loras", f"LoRA {filename} is in the {_REFUSED[split[1]]} format, not supported"
            )
        grouped.setdefault(split[0], {})[split[1]] = tensor
    if not grouped:
        raise fail("the file holds no LoRA weights")
    peft = _peft_config(metadata, next(iter(grouped)))
    if peft is not None and peft.get("use_dora"):
        raise EngineInputError(
            "loras", f"LoRA {filename} is in the {_REFUSED['dora']} format, not supported"
        )

    chosen: dict[tuple[str, str], tuple[int, str, dict[str, torch.Tensor]]] = {}
    for module_key, parts in grouped.items():
        try:
            attr, module = targets.lookup(module_key)
        except KeyError:
            raise fail(f"no module {module_key} (made for another model architecture?)") from None
        rank = targets.alias_rank(module_key)
        previous = chosen.get((attr, module))
        if previous is None or rank > previous[0]:
            chosen[(attr, module)] = (rank, module_key, parts)

    deltas: list[LoraDelta] = []
    for (attr, module), (_, module_key, parts) in chosen.items():
        deltas += _module_deltas(attr, module, module_key, dict(parts), targets, metadata, fail)
    return deltas


def _module_deltas(
    attr: str,
    module: str,
    module_key: str,
    parts: dict[str, torch.Tensor],
    targets: LoraTargets,
    metadata: Mapping[str, str],
    fail: Any,
) -> list[LoraDelta]:
    alpha_tensor = parts.pop("alpha", None)
    alpha = float(alpha_tensor) if alpha_tensor is not None else None
    found: list[LoraDelta] = []
    # Full differences and norm weights: weight and bias deltas as they are.
    for part, which in (
        ("diff", "weight"),
        ("w_norm", "weight"),
        ("diff_b", "bias"),
        ("b_norm", "bias"),
    ):
        if part in parts:
            found.append(LoraDelta(attr, module, {"diff": parts.pop(part)}, 1.0, "diff", which))
    factor_kind = None
    for kind, (required, optional) in _LORA_KINDS.items():
        if required & parts.keys():
            if not required <= parts.keys() or not parts.keys() <= required | optional:
                raise fail(f"{module_key}: incomplete factors {sorted(parts)}")
            factor_kind = kind
    lokr = {k for k in parts if k.startswith("lokr_")}
    if lokr:
        has_w1 = "lokr_w1" in parts or {"lokr_w1_a", "lokr_w1_b"} <= parts.keys()
        has_w2 = "lokr_w2" in parts or {"lokr_w2_a", "lokr_w2_b"} <= parts.keys()
        if not (has_w1 and has_w2) or factor_kind is not None or lokr != parts.keys():
            raise fail(f"{module_key}: incomplete factors {sorted(parts)}")
        factor_kind = "lokr"
    if factor_kind is None and parts:
        raise fail(f"{module_key}: incomplete factors {sorted(parts)}")
    if factor_kind is not None:
        found.append(
            _factor_delta(attr, module, module_key, factor_kind, parts, alpha, metadata, fail)
        )
    if not found:
        raise fail(f"{module_key}: incomplete factors {sorted(parts) or ['alpha']}")
    for delta in found:
        try:
            param = targets.parameter(attr, module, delta.param)
        except KeyError:
            raise fail(f"{module_key}: the module has no {delta.param}") from None
        fits = (
            tuple(delta.factors["diff"].shape) == tuple(param.shape)
            if delta.kind == "diff"
            else delta.output_numel() == param.numel()
        )
        if not fits:
            raise fail(
                f"{module_key}: delta does not fit the {delta.param} of shape {tuple(param.shape)}"
            )
    return found


def _factor_delta(
    attr: str,
    module: str,
    module_key: str,
    kind: str,
    parts: dict[str, torch.Tensor],
    alpha: float | None,
    metadata: Mapping[str, str],
    fail: Any,
) -> LoraDelta:
    rank: int | None
    if kind == "lora":
        rank = int(parts["down"].shape[0])
        if parts["up"].shape[1] != rank:
            raise fail(f"{module_key}: up and down factors disagree on the rank")
    elif kind == "loha":
        rank = int(parts["hada_w1_b"].shape[0])
    else:
        rank = None
        if "lokr_w1_b" in parts:
            rank = int(parts["lokr_w1_b"].shape[0])
        if "lokr_w2_b" in parts:
            rank = int(parts["lokr_w2_b"].shape[0])
    scale = 1.0
    if alpha is not None and rank is not None:
        scale = alpha / rank
    elif alpha is None and kind == "lora" and rank is not None:
        config = _peft_config(metadata, module_key)
        peft_scale = None if config is None else _peft_scale(config, module_key, rank)
        scale = 1.0 if peft_scale is None else peft_scale
    return LoraDelta(attr, module, parts, scale, kind)


class LoraPatcher:
    """Merges a set of LoRAs into one model's weights and takes them out again."""

    def __init__(self, components: SDXLComponents) -> None:
        self.targets = LoraTargets(components)
        # Originals live on the CPU: a full-UNet LoRA would otherwise double its GPU memory.
        self._originals: dict[tuple[str, str, str], torch.Tensor] = {}
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
        by_param: dict[tuple[str, str, str], list[tuple[LoraDelta, float]]] = {}
        for path, weight in active:
            state, metadata = read_lora_file(path)
            for delta in parse_lora(state, self.targets, path.name, metadata):
                key = (delta.attr, delta.module, delta.param)
                by_param.setdefault(key, []).append((delta, weight))

        with torch.no_grad():
            for key in [k for k in self._originals if k not in by_param]:
                self.targets.parameter(*key).copy_(self._originals.pop(key))
            for key, items in by_param.items():
                param = self.targets.parameter(*key)
                if key not in self._originals:
                    self._originals[key] = param.detach().to("cpu", copy=True)
                # copy=True: on the CPU .to() would otherwise alias the saved original.
                merged = self._originals[key].to(param.device, torch.float32, copy=True)
                for delta, weight in items:
                    merged += delta.compute(param.shape, param.device) * weight
                param.copy_(merged.to(param.dtype))
        self._applied = signature
        return True

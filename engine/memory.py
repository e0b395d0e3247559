"""Where each model lives while the engine runs: the memory plan and the device placer.

:func:`plan_memory` is a pure function of the components' sizes (bytes) and a budget (the free
device memory measured at start): it resolves ``FOOOCUS_VRAM`` (``auto|high|normal|low|none``)
and says, per component, whether it stays on the device (``resident``), is moved there only
while it runs (``on_demand``), is streamed to it block by block (``streamed``), or runs on the
CPU. It also says how many images one UNet call may batch and when VAE work must be tiled.

The levels follow Fooocus's (``ldm_patched/modules/model_management.py``): ``high`` keeps
everything resident; ``normal`` keeps the UNet resident and moves the text encoders, VAE,
refiner and helper models in for their turn; ``low`` streams the UNet itself (diffusers' group
offloading, one block at a time); ``none`` runs on the CPU. ``auto`` picks ``low`` up to 4 GiB,
like Fooocus, else the highest level whose peak fits. Working memory is estimated the way Fooocus
does: about ``rows · h · w · bytes / 50`` MiB for a UNet call on an ``h × w`` latent (with
PyTorch attention) and Fooocus's VAE coefficients, with 1 GiB kept free for inference.

:class:`DevicePlacer` applies a plan: it moves modules, installs an accelerate hook on each
on-demand module (the module is brought to the device when called, and the least recently used
on-demand modules leave when the budget needs room), and diffusers' group offloading on streamed
ones. Nothing here imports the rest of the engine.
"""

from __future__ import annotations

import gc
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from engine.types import EngineError

Level = Literal["high", "normal", "low", "none"]
Placement = Literal["resident", "on_demand", "streamed", "cpu"]
LEVELS: tuple[str, ...] = ("auto", "high", "normal", "low", "none")
VRAM_ENV = "FOOOCUS_VRAM"

GIB = 1024**3
MIB = 1024**2
LOW_VRAM_LIMIT = 4 * GIB
"""Fooocus switches to low-VRAM mode on cards of this size or less."""
INFERENCE_RESERVE = 1 * GIB
"""Fooocus's ``minimum_inference_memory``: kept free beside the weights."""
UNET_WORK_DIVISOR = 50
"""Fooocus's UNet working-memory estimate: rows·h·w·bytes/50 MiB (PyTorch attention)."""
VAE_DECODE_PER_LATENT_PIXEL = 2178 * 64
VAE_ENCODE_PER_PIXEL = 1767
"""Fooocus's VAE working-memory coefficients (bytes per element size, per latent / image pixel)."""
SDXL_WIDTH = 1280
"""The widest UNet level of SDXL, which the working-memory coefficients were measured on."""
STREAM_BLOCKS = 1
"""Blocks of the streamed UNet on the device at once (plus the one being prefetched)."""

UNET, TEXT_ENCODERS, VAE, REFINER = "unet", "text_encoders", "vae", "refiner"
BASE_COMPONENTS = (UNET, TEXT_ENCODERS, VAE)
EXTRA_MODELS = (
    "inpaint_patch",
    "inpaint_head",
    "controlnet",
    "ip_adapter",
    "clip_vision",
    "upscaler",
    "expansion",
    "safety",
)
"""The feature models a request may add; their sizes go in :attr:`ComponentSizes.extras`."""


class OutOfMemoryError(EngineError):
    """A task ran out of device memory; the message names the level and what to set."""

    def __init__(self, level: str, what: str) -> None:
        lower = {"high": "normal", "normal": "low", "low": "none"}.get(level)
        advice = (
            f"set {VRAM_ENV}={lower} (or a smaller size / image_number)"
            if lower
            else "use a smaller size or image_number"
        )
        super().__init__(f"out of memory {what} with memory level '{level}': {advice}")
        self.level = level


def env_level(environ: Mapping[str, str] | None = None) -> str:
    """``FOOOCUS_VRAM`` (default ``auto``); ValueError naming the variable when unknown."""
    value = (environ if environ is not None else os.environ).get(VRAM_ENV, "auto").strip().lower()
    if value not in LEVELS:
        raise ValueError(f"{VRAM_ENV}={value!r}: expected one of {', '.join(LEVELS)}")
    return value or "auto"


def module_bytes(module: torch.nn.Module | None) -> int:
    """The bytes of a module's parameters and buffers (0 for None)."""
    if module is None:
        return 0
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class ComponentSizes:
    """Bytes of every model a run may put on the device.

    ``work_scale`` scales the working-memory estimates (1.0 for SDXL: they are Fooocus's, measured
    on SDXL-wide models; the tiny demo model is about 1/20 as wide). ``dtype_bytes`` is the
    compute element size (2 for fp16/bf16).
    """

    unet: int
    text_encoders: int
    vae: int
    refiner: int = 0
    extras: Mapping[str, int] = field(default_factory=dict)
    dtype_bytes: int = 2
    work_scale: float = 1.0

    def __post_init__(self) -> None:
        unknown = set(self.extras) - set(EXTRA_MODELS)
        if unknown:
            raise ValueError(f"unknown extra models {sorted(unknown)}; expected {EXTRA_MODELS}")

    def of(self, name: str) -> int:
        if name in self.extras:
            return self.extras[name]
        return int(getattr(self, name))

    @property
    def names(self) -> tuple[str, ...]:
        present = [n for n in (*BASE_COMPONENTS, REFINER) if self.of(n) > 0]
        return (*present, *self.extras)

    @property
    def total(self) -> int:
        return sum(self.of(n) for n in self.names)

    def unet_work(self, rows: int, latent_h: int, latent_w: int) -> int:
        """Working memory of one UNet call on ``rows`` latents (CFG doubles the rows)."""
        area = rows * latent_h * latent_w
        return math.ceil(area * self.dtype_bytes / UNET_WORK_DIVISOR * MIB * self.work_scale)

    def vae_decode_work(self, latent_h: int, latent_w: int) -> int:
        per = VAE_DECODE_PER_LATENT_PIXEL * self.dtype_bytes * self.work_scale
        return math.ceil(latent_h * latent_w * per)

    def vae_encode_work(self, height: int, width: int) -> int:
        return math.ceil(height * width * VAE_ENCODE_PER_PIXEL * self.dtype_bytes * self.work_scale)


@dataclass(frozen=True)
class MemoryPlan:
    """Where each component lives under one level and budget (see the module docstring)."""

    level: Level
    requested: str
    budget: int | None
    sizes: ComponentSizes
    placements: Mapping[str, Placement]
    refiner_evicts_unet: bool
    """normal: the base UNet leaves the device while the refiner runs (both do not fit)."""

    @property
    def device_names(self) -> tuple[str, ...]:
        """Components whose weights go to the device whole (resident or on demand)."""
        return self.names("resident") + self.names("on_demand")

    def placement(self, name: str) -> Placement:
        default: Placement = {"none": "cpu", "high": "resident"}.get(  # type: ignore[assignment]
            self.level, "on_demand"
        )
        return self.placements.get(name, default)

    def names(self, placement: Placement) -> tuple[str, ...]:
        return tuple(n for n, p in self.placements.items() if p == placement)

    @property
    def resident_bytes(self) -> int:
        """Bytes that stay on the device for the whole run."""
        return sum(self.sizes.of(n) for n in self.names("resident"))

    def _stream_window(self, name: str) -> int:
        # The largest group of an SDXL UNet is a few percent of it; two groups are live at once
        # (the running one and the prefetched one). Estimated as 2/12 of the model (12 top-level
        # block groups in the SDXL UNet: down, mid, up, and their embeddings).
        return 2 * self.sizes.of(name) // 12 if self.placement(name) == "streamed" else 0

    def sampling_bytes(self, rows: int, latent_h: int, latent_w: int, *, refiner: bool) -> int:
        """Peak device bytes while sampling ``rows`` latent rows with the base (or refiner).

        high keeps everything resident; normal needs only the sampling UNet there (the others
        make room, the base UNet too while the refiner runs); low holds two streamed blocks.
        """
        if self.budget is None:
            return 0
        model = REFINER if refiner and self.sizes.refiner else UNET
        if self.level == "high":
            weights = self.resident_bytes
        elif self.level == "normal":
            weights = self.sizes.of(model)
        else:
            weights = self._stream_window(model)
        return weights + max(INFERENCE_RESERVE, self.sizes.unet_work(rows, latent_h, latent_w))

    def max_batch(self, latent_h: int, latent_w: int, *, guided: bool, wanted: int) -> int:
        """How many images one UNet call may take (1..wanted) under the budget."""
        if wanted <= 1 or self.budget is None:
            return max(1, wanted)
        rows = 2 if guided else 1
        for batch in range(wanted, 1, -1):
            need = max(
                self.sampling_bytes(rows * batch, latent_h, latent_w, refiner=False),
                self.sampling_bytes(rows * batch, latent_h, latent_w, refiner=True)
                if self.sizes.refiner
                else 0,
            )
            if need <= self.budget:
                return batch
        return 1

    def _vae_free(self) -> int | None:
        if self.budget is None:
            return None
        # high: beside every resident model; normal: beside the UNet (the VAE's turn evicts the
        # rest); low: beside the VAE alone.
        weights = {"high": self.resident_bytes, "normal": self.sizes.unet + self.sizes.vae}.get(
            self.level, self.sizes.vae
        )
        return self.budget - weights - INFERENCE_RESERVE // 4

    def tile_decode(self, latent_h: int, latent_w: int) -> bool:
        """Whether decoding an ``h × w`` latent must be tiled to fit."""
        free = self._vae_free()
        return free is not None and self.sizes.vae_decode_work(latent_h, latent_w) > free

    def tile_encode(self, height: int, width: int) -> bool:
        """Whether encoding an ``height × width`` image must be tiled to fit."""
        free = self._vae_free()
        return free is not None and self.sizes.vae_encode_work(height, width) > free

    def describe(self) -> str:
        budget = "no device memory limit" if self.budget is None else f"{self.budget / GIB:.1f} GiB"
        by = ", ".join(f"{n}={p}" for n, p in self.placements.items())
        return f"{self.level} ({self.requested}, {budget}): {by}"


def resolve_level(
    sizes: ComponentSizes, requested: str, budget: int | None, *, native_latent: int = 128
) -> Level:
    """The level ``requested`` means for these sizes and budget (``auto`` decided here)."""
    if requested not in LEVELS:
        raise ValueError(f"{VRAM_ENV}={requested!r}: expected one of {', '.join(LEVELS)}")
    if budget is None:
        return "none"  # no accelerator: the CPU does the work whatever was asked
    if requested != "auto":
        return requested  # type: ignore[return-value]
    if budget <= LOW_VRAM_LIMIT:
        return "low"
    work = max(INFERENCE_RESERVE, sizes.unet_work(2, native_latent, native_latent))
    if sizes.total + work <= budget:
        return "high"
    # normal: the sampling UNet and its working memory fit; every other model takes its turn.
    if max(sizes.unet, sizes.refiner) + work <= budget:
        return "normal"
    return "low"


def plan_memory(
    sizes: ComponentSizes, requested: str, budget: int | None, *, native_latent: int = 128
) -> MemoryPlan:
    """The memory plan for ``sizes`` under ``budget`` bytes (None: no accelerator, the CPU).

    ``native_latent`` is the model's native latent side (128 for SDXL's 1024 px), which sizes the
    working memory ``auto`` reserves.
    """
    level = resolve_level(sizes, requested, budget, native_latent=native_latent)
    names = sizes.names
    placements: dict[str, Placement]
    if level == "none":
        placements = dict.fromkeys(names, "cpu")
    elif level == "high":
        placements = dict.fromkeys(names, "resident")
    elif level == "normal":
        placements = {n: ("resident" if n == UNET else "on_demand") for n in names}
    else:
        placements = {n: ("streamed" if n in (UNET, REFINER) else "on_demand") for n in names}
    evicts = False
    if level == "normal" and sizes.refiner and budget is not None:
        work = max(INFERENCE_RESERVE, sizes.unet_work(2, native_latent, native_latent))
        evicts = sizes.unet + sizes.refiner + work > budget
    return MemoryPlan(level, requested, budget, sizes, placements, evicts)


def free_device_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` now (CUDA's mem_get_info; its per-process fraction cap too);
    None for the CPU (and for CUDA on a machine without a GPU)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(device)
    # set_per_process_memory_fraction caps the allocator below what the driver reports.
    fraction = _memory_fraction(device)
    if fraction < 1.0:
        cap = int(total * fraction) - torch.cuda.memory_reserved(device)
        free = min(free, max(cap, 0))
    return int(free)


def _memory_fraction(device: torch.device) -> float:
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    if getter is None:  # older torch: no way to read it back
        return 1.0
    try:
        return float(getter(device))
    except (RuntimeError, TypeError):
        return 1.0


def release_memory() -> None:
    """Give cached allocations back: Python garbage, then CUDA's caching allocator."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device allocation failure (torch.OutOfMemoryError or its older spellings)."""
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _make_hook(placer: DevicePlacer, name: str) -> Any:
    from accelerate.hooks import ModelHook
    from accelerate.utils import send_to_device

    class OnDemandHook(ModelHook):
        # diffusers' VAE encode/decode call ``_hf_hook.pre_forward`` too (apply_forward_hook).
        def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            placer.onload(name)
            device = placer.device
            return send_to_device(args, device), send_to_device(kwargs, device)

    return OnDemandHook()


class DevicePlacer:
    """Applies a :class:`MemoryPlan` to the live modules of one engine on one device.

    Modules are registered under plan names (``unet``, ``text_encoders``, ``vae``, ``refiner``,
    an extra model's name); several modules may share a name (both text encoders). ``budget`` is
    the device memory this engine may use (None on the CPU).
    """

    def __init__(self, device: torch.device, requested: str = "auto", budget: int | None = None):
        if requested not in LEVELS:
            raise ValueError(f"{VRAM_ENV}={requested!r}: expected one of {', '.join(LEVELS)}")
        self.device = device
        self.requested = requested
        if budget is None and device.type == "cuda" and torch.cuda.is_available():
            budget = free_device_memory(device)  # a GPU always has a limit: measure it now
        self.budget = budget
        self._modules: dict[str, list[torch.nn.Module]] = {}
        self._sizes: dict[str, int] = {}
        self._placed: dict[int, Placement] = {}
        self._on_device: OrderedDict[str, None] = OrderedDict()  # whole models there, LRU first
        self.plan: MemoryPlan | None = None
        self.moves = 0
        """Whole-model moves onto the device so far (for tests and benches)."""
        self.dtype_bytes = 2 if device.type == "cuda" else 4
        self.work_scale = 1.0
        self.native_latent = 128

    @property
    def offload_device(self) -> torch.device:
        return torch.device("cpu")

    def sizes(self) -> ComponentSizes:
        extras = {n: b for n, b in self._sizes.items() if n in EXTRA_MODELS}
        return ComponentSizes(
            unet=self._sizes.get(UNET, 0),
            text_encoders=self._sizes.get(TEXT_ENCODERS, 0),
            vae=self._sizes.get(VAE, 0),
            refiner=self._sizes.get(REFINER, 0),
            extras=extras,
            dtype_bytes=self.dtype_bytes,
            work_scale=self.work_scale,
        )

    def configure_for(self, unet: torch.nn.Module) -> None:
        """Scale the working-memory estimates to this UNet (SDXL's widest level is 1280)."""
        config = getattr(unet, "config", None)
        if config is not None:
            self.work_scale = float(config.block_out_channels[-1]) / SDXL_WIDTH
            self.native_latent = int(config.sample_size)
        for tensor in unet.parameters():
            self.dtype_bytes = tensor.element_size()
            break

    def check_fits(self, rows: int, latent_h: int, latent_w: int, *, refiner: bool) -> None:
        """OutOfMemoryError when sampling ``rows`` latents cannot fit even as planned."""
        plan = self.plan
        if plan is None or self.budget is None:
            return
        need = plan.sampling_bytes(rows, latent_h, latent_w, refiner=refiner)
        if need > self.budget:
            what = (
                f"planning a {latent_w * 8}x{latent_h * 8} batch of {rows} latent rows "
                f"(about {need / GIB:.2f} GiB needed, {self.budget / GIB:.2f} GiB available)"
            )
            raise OutOfMemoryError(plan.level, what)

    def register(self, name: str, modules: Iterable[torch.nn.Module | None]) -> MemoryPlan:
        """Put ``modules`` under ``name`` (replacing what it held), replan and apply the plan."""
        kept = [m for m in modules if m is not None]
        held = self._modules.get(name)
        if held is not None and [id(m) for m in held] == [id(m) for m in kept] and self.plan:
            return self.plan  # the same modules again: already placed
        self.forget(name)
        if not kept:
            return self.replan()
        self._modules[name] = kept
        self._sizes[name] = sum(module_bytes(m) for m in kept)
        return self.replan()

    def forget(self, name: str) -> None:
        """Drop ``name``'s modules (moved off the device first)."""
        for module in self._modules.pop(name, []):
            if self._placed.get(id(module)) in ("resident", "on_demand"):
                module.to(self.offload_device)
            self._placed.pop(id(module), None)
        self._sizes.pop(name, None)
        self._on_device.pop(name, None)

    def replan(self) -> MemoryPlan:
        plan = plan_memory(
            self.sizes(), self.requested, self.budget, native_latent=self.native_latent
        )
        self.plan = plan
        for name, modules in self._modules.items():
            for module in modules:
                self._place(name, module, plan.placement(name))
        return plan

    def _place(self, name: str, module: torch.nn.Module, placement: Placement) -> None:
        key = id(module)
        before = self._placed.get(key)
        if before == placement or before == "streamed":
            return  # group offloading cannot be taken off; a new model load replaces it
        from accelerate.hooks import add_hook_to_module, remove_hook_from_module

        if before == "on_demand":
            remove_hook_from_module(module)
        if placement == "resident":
            module.to(self.device)
            self._on_device[name] = None
        elif placement == "cpu":
            module.to(self.offload_device)
        elif placement == "on_demand":
            module.to(self.offload_device)
            self._on_device.pop(name, None)
            add_hook_to_module(module, _make_hook(self, name))
        else:
            from diffusers.hooks import apply_group_offloading

            module.to(self.offload_device)
            streams = self.device.type == "cuda"
            apply_group_offloading(
                module,
                onload_device=self.device,
                offload_device=self.offload_device,
                offload_type="block_level",
                num_blocks_per_group=STREAM_BLOCKS,
                use_stream=streams,
                non_blocking=streams,
            )
            if streams:
                _bind_pinned_copies(module)
        self._placed[key] = placement

    def placement_of(self, name: str) -> Placement | None:
        modules = self._modules.get(name)
        return self._placed.get(id(modules[0])) if modules else None

    def onload(self, name: str, work: int = INFERENCE_RESERVE) -> None:
        """Bring ``name`` to the device with ``work`` bytes free beside it, first moving out the
        least recently used others (on-demand ones before the resident UNet) until it fits.
        Under ``high`` nothing is moved out: everything was asked to stay."""
        there = self._on_device.pop(name, 0) is None
        plan = self.plan
        if self.budget is not None and plan is not None and plan.level != "high":
            need = self._sizes.get(name, 0) + work
            while self._device_bytes() + need > self.budget:
                victim = self._victim()
                if victim is None:
                    break
                self.offload(victim)
        if not there:
            self.moves += 1
            for module in self._modules.get(name, []):
                module.to(self.device)
        self._on_device[name] = None

    def on_device(self) -> tuple[str, ...]:
        """The whole models on the device now, least recently used first."""
        return tuple(self._on_device)

    def _device_bytes(self) -> int:
        return sum(self._sizes.get(n, 0) for n in self._on_device)

    def _victim(self) -> str | None:
        names = list(self._on_device)
        on_demand = [n for n in names if self.placement_of(n) == "on_demand"]
        pool = on_demand or names
        return pool[0] if pool else None

    def offload(self, name: str) -> None:
        """Move ``name`` (on demand, or a resident one making room) back to the CPU."""
        self._on_device.pop(name, None)
        for module in self._modules.get(name, []):
            if self._placed.get(id(module)) in ("on_demand", "resident"):
                module.to(self.offload_device)

    def ensure(self, name: str, work: int = INFERENCE_RESERVE) -> None:
        """Before sampling with ``name``: on the device (if it goes there whole), with ``work``
        bytes free beside it."""
        if self.placement_of(name) in ("on_demand", "resident"):
            self.onload(name, max(work, INFERENCE_RESERVE))

    def offload_all(self) -> None:
        """Every on-demand module back to the CPU; resident ones back on the device."""
        for name in list(self._on_device):
            if self.placement_of(name) == "on_demand":
                self.offload(name)
        for name in self._modules:
            if self.placement_of(name) == "resident" and name not in self._on_device:
                self.onload(name)

    def clear(self) -> None:
        """Forget every module (the caller drops its references) and free the memory."""
        for name in list(self._modules):
            self.forget(name)
        self.plan = None
        release_memory()


def _bind_pinned_copies(module: torch.nn.Module) -> None:
    """With CUDA streams, group offloading uploads from pinned copies it made of the weights;
    until a group's first offload the module still holds the originals, so an in-place patch
    made before the first forward (the LoRAs of the first task) would miss the copies. Offloading
    every group once now makes the pinned copies the weights themselves."""
    for part in module.modules():
        registry = getattr(part, "_diffusers_hook", None)
        hook = registry.get_hook("group_offloading") if registry is not None else None
        group = getattr(hook, "group", None)
        if group is not None and getattr(group, "cpu_param_dict", None):
            group.offload_()


def modules_in(obj: object) -> list[torch.nn.Module]:
    """The torch modules an object holds as attributes (a helper model's wrapper)."""
    if isinstance(obj, torch.nn.Module):
        return [obj]
    return [v for v in vars(obj).values() if isinstance(v, torch.nn.Module)]

"""The model files an engine uses: where they are, fetching missing ones, and the loaded base model.

One :class:`ModelManager` lives as long as the engine. It keeps the loaded base model between tasks
and only does the work a new request needs: another checkpoint is loaded in place of the old
one, another VAE swaps only the VAE, another LoRA set only restores and re-patches the weights the
old and new sets touch.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.config import EngineConfig, is_model_entry, list_model_files, model_folder
from engine.memory import REFINER, TEXT_ENCODERS, UNET, VAE, DevicePlacer, release_memory
from engine.models.components import SDXLComponents
from engine.models.downloads import DownloadError, download_file
from engine.models.loading import CheckpointFormatError, load_checkpoint, load_vae
from engine.models.lora import LoraPatcher
from engine.options import DEFAULT_VAE
from engine.types import EngineInputError, ModelFileMissingError

MessageCallback = Callable[[str], None]

# The request field a bad file name in each folder is reported against.
REQUEST_FIELDS: dict[str, str] = {
    "checkpoints": "base_model_name",
    "loras": "loras",
    "vae": "vae_name",
}


COMPILE_ENV = "FOOOCUS_COMPILE"


def compile_enabled(config: EngineConfig) -> bool:
    """``config.compile``, else ``FOOOCUS_COMPILE`` (1/true/yes/on)."""
    if config.compile is not None:
        return config.compile
    return os.environ.get(COMPILE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def compile_backend() -> str:
    """``FOOOCUS_COMPILE_BACKEND`` (default inductor; e.g. aot_eager to trace without codegen)."""
    return os.environ.get(COMPILE_ENV + "_BACKEND", "").strip() or "inductor"


def _ignore(_message: str) -> None:
    pass


@dataclass
class _LoadedBase:
    name: str
    mtime_ns: int
    components: SDXLComponents
    """With the checkpoint's own VAE."""
    patcher: LoraPatcher
    vae_name: str
    view: SDXLComponents
    """What callers get: ``components``, or a copy of it holding the selected custom VAE."""


class ModelManager:
    """Finds, downloads, loads and caches the models of one engine on one device."""

    def __init__(
        self,
        config: EngineConfig,
        device: torch.device,
        dtype: torch.dtype,
        placer: DevicePlacer | None = None,
    ) -> None:
        self.config = config
        self.device = device
        self.dtype = dtype
        # Where each loaded module lives (resident, moved in while used, streamed): the memory
        # plan. Without one every module stays on ``device``, as a "high" plan would have it.
        self.placer = placer or DevicePlacer(device, "high" if device.type == "cuda" else "none")
        self.compile = compile_enabled(config)
        # The SDXL VAE overflows in float16; bfloat16 keeps its range (Fooocus does the same).
        # The CPU gains nothing from half precision there, so it keeps float32.
        use_full = device.type == "cpu" or dtype == torch.float32
        self.vae_dtype = torch.float32 if use_full else torch.bfloat16
        self._base: _LoadedBase | None = None
        self._refiner: _LoadedBase | None = None

    @property
    def loaded_name(self) -> str | None:
        """The name of the base model held in memory, if any."""
        return self._base.name if self._base else None

    def folder_path(self, folder: str) -> Path:
        """``models_dir/<folder>`` (see :func:`engine.config.model_folder`)."""
        return model_folder(self.config.models_dir, folder)

    def list_files(self, folder: str) -> list[str]:
        """The models in ``folder`` (see :func:`engine.config.list_model_files`)."""
        return list_model_files(self.config.models_dir, folder)

    def require(
        self, folder: str, filename: str, on_message: MessageCallback | None = None
    ) -> Path:
        """The path of a model file, downloading it first when it is missing and has a known URL.

        Raises EngineInputError for names that are not plain file names, and
        ModelFileMissingError when the file is absent and cannot be downloaded.
        """
        root = self.folder_path(folder)
        field = REQUEST_FIELDS.get(folder, folder)
        if (
            not filename
            or filename in (".", "..")
            or any(c in filename for c in "/\\\0")
            or filename.startswith(".")
        ):
            raise EngineInputError(field, f"{filename!r} is not a valid {folder} file name")
        path = root / filename
        if path.exists():
            if path.is_dir() and not is_model_entry(folder, path, ()):
                raise EngineInputError(field, f"{filename} in {root} is not a model folder")
            return path
        key = f"{folder}/{filename}"
        url = self.config.downloads.get(key)
        if url and self.config.allow_downloads:
            try:
                return download_file(url, path, on_message, sha256=self.config.checksums.get(key))
            except DownloadError as exc:
                raise ModelFileMissingError(
                    filename, folder, f"{exc}; put {filename} in {root}"
                ) from exc
        message = f"Model file {filename} is missing: put it in {root}"
        if url:
            message += f" (download it from {url}; automatic downloads are turned off)"
        raise ModelFileMissingError(filename, folder, message)

    def load_base(
        self,
        name: str,
        *,
        vae_name: str = DEFAULT_VAE,
        loras: Sequence[tuple[str, float]] = (),
        on_message: MessageCallback | None = None,
    ) -> SDXLComponents:
        """The base model ``name`` with ``vae_name`` and the ``loras`` (file, weight) merged in.

        Every file is found (or downloaded) before anything loads. The model stays cached: the
        same name returns the same modules; another name frees the old model first. The result's
        modules are on :attr:`device`, in :attr:`dtype` (the VAE in :attr:`vae_dtype`), in eval
        mode without gradients. Call this for every task: LoRA weights are patched into the
        modules in place, so an older result shows the newest LoRA set.
        """
        report = on_message or _ignore
        path = self.require("checkpoints", name, on_message)
        vae_path = (
            None if vae_name in (DEFAULT_VAE, "None") else self.require("vae", vae_name, on_message)
        )
        lora_paths = [(self.require("loras", file, on_message), weight) for file, weight in loras]

        base = self._base
        mtime_ns = path.stat().st_mtime_ns
        if base is None or base.name != name or base.mtime_ns != mtime_ns:
            self.clear()  # two SDXL models rarely fit in GPU memory together
            report(f"Loading base model {name} ...")
            base = self._base = self._load_base(name, path, mtime_ns)
        if base.vae_name != vae_name:
            self._set_vae(base, vae_name, vae_path, report)
        if base.patcher.apply(lora_paths):
            applied = ", ".join(f"{p.name} ({w:g})" for p, w in lora_paths if w) or "none"
            report(f"LoRAs applied: {applied}")
        return base.view

    def load_refiner(
        self,
        name: str,
        *,
        loras: Sequence[tuple[str, float]] = (),
        on_message: MessageCallback | None = None,
    ) -> SDXLComponents:
        """The refiner checkpoint ``name``, kept beside the base model, with the user's LoRAs.

        LoRAs that do not fit the refiner are left out of it (Fooocus skips them silently); the
        refiner's own text encoders are never used (its conditioning comes from the base's).
        """
        report = on_message or _ignore
        path = self.require("checkpoints", name, on_message)
        lora_paths = [(self.require("loras", file, on_message), weight) for file, weight in loras]
        refiner = self._refiner
        mtime_ns = path.stat().st_mtime_ns
        if refiner is None or refiner.name != name or refiner.mtime_ns != mtime_ns:
            self._refiner = None
            self.placer.forget(REFINER)
            gc.collect()
            report(f"Loading refiner {name} ...")
            try:
                refiner = self._refiner = self._load_base(name, path, mtime_ns, refiner=True)
            except EngineInputError as exc:
                raise EngineInputError("refiner_model_name", exc.message) from exc
        try:
            refiner.patcher.apply(lora_paths)
        except EngineInputError as exc:
            report(f"LoRAs not applied to the refiner: {exc.message}")
            refiner.patcher.apply([])
        return refiner.view

    def _load_base(
        self, name: str, path: Path, mtime_ns: int, *, refiner: bool = False
    ) -> _LoadedBase:
        try:
            components = load_checkpoint(path, self.dtype, self.vae_dtype)
        except CheckpointFormatError as exc:
            raise EngineInputError("base_model_name", f"cannot load {name}: {exc}") from exc
        return self._adopt(components, name, mtime_ns, refiner=refiner)

    def _adopt(
        self, components: SDXLComponents, name: str, mtime_ns: int, *, refiner: bool
    ) -> _LoadedBase:
        """Place freshly loaded modules as the memory plan says and keep them."""
        placer = self.placer
        if self.device.type == "cuda":
            # NHWC suits the tensor cores' convolutions in half precision (cuDNN picks NHWC
            # kernels); the attention layers are diffusers' default SDPA processors.
            components.unet.to(memory_format=torch.channels_last)
            components.vae.to(memory_format=torch.channels_last)
        if refiner:
            # Only the refiner's UNet runs: its conditioning comes from the base's text encoders
            # and its latents are decoded by the base's VAE, so the rest stays in system memory.
            placer.register(REFINER, [components.unet])
        else:
            placer.configure_for(components.unet)
            placer.register(UNET, [components.unet])
            placer.register(TEXT_ENCODERS, [components.text_encoder, components.text_encoder_2])
            placer.register(VAE, [components.vae])
        if self.compile and placer.placement_of(REFINER if refiner else UNET) != "streamed":
            # In place, so the module keeps its attributes; one graph per input shape
            # (dynamic=False): a new size compiles once, then every step reuses it.
            components.unet.compile(dynamic=False, backend=compile_backend())
        components.name = name
        return _LoadedBase(
            name, mtime_ns, components, LoraPatcher(components), DEFAULT_VAE, components
        )

    def _set_vae(
        self, base: _LoadedBase, vae_name: str, path: Path | None, report: MessageCallback
    ) -> None:
        if path is None:
            base.view, base.vae_name = base.components, DEFAULT_VAE
            self.placer.register(VAE, [base.components.vae])
            return
        report(f"Loading VAE {vae_name} ...")
        base.view = base.components  # drop the previous custom VAE before loading the next
        self.placer.register(VAE, [base.components.vae])
        try:
            vae = load_vae(path, base.components.vae.config, self.vae_dtype)
        except CheckpointFormatError as exc:
            base.vae_name = DEFAULT_VAE
            raise EngineInputError("vae_name", f"cannot load VAE {vae_name}: {exc}") from exc
        base.view = dataclasses.replace(base.components, vae=vae)
        self.placer.register(VAE, [vae])
        base.vae_name = vae_name

    def clear(self) -> None:
        """Drop every loaded model and give the memory back (CUDA cache included)."""
        self._base = None
        self._refiner = None
        for name in (UNET, TEXT_ENCODERS, VAE, REFINER):
            self.placer.forget(name)
        release_memory()

"""SDXL on one GPU: this engine against a plain diffusers StableDiffusionXLPipeline, in one table.

Builds the full-size SDXL base (and refiner) from the shipped configs (``engine/configs``) with
random weights, so nothing is downloaded, and measures on the same GPU, weights, sampler and steps:

- Speed (30 guided dpmpp_2m/karras steps) and Lightning (4 unguided euler/sgm_uniform steps) at
  1024²: seconds per image, sampling steps per second, peak GPU memory, and the fraction of peak
  FLOP/s the UNet reaches (FLOPs counted from the architecture with FlopCounterMode on one UNet
  call, divided by the timed UNet call);
- Speed with the memory capped to 8 GB and to 6 GB (set_per_process_memory_fraction), on the
  ``auto`` memory plan;
- batching: image_number 4 batched vs one by one, and 8 queued tasks as one batch vs one by one.

    python bench/gpu_sdxl.py [--peak-tflops 989] [--out table.md]
    python bench/gpu_sdxl.py --tiny     # the same on the CPU, demo-sized architecture

``--tiny`` runs in the test suite: the tiny model at its native 64², CPU float32, the caps as
simulated budgets (the memory plan acts as on a card of that size), FLOP/s without a peak.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import Engine, EngineConfig, EngineEvent, EngineRequest  # noqa: E402
from engine.batch import BatchItem  # noqa: E402
from engine.memory import GIB  # noqa: E402
from engine.models.components import (  # noqa: E402
    REFINER_CONFIG_DIR,
    SDXL_CONFIG_DIR,
    SDXLComponents,
    build_tiny_refiner,
    build_tiny_sdxl,
)
from engine.models.manager import ModelManager, _LoadedBase  # noqa: E402

BASE = "sdxl_random_base.safetensors"
REFINER = "sdxl_random_refiner.safetensors"
SEED = 1234
PROMPT = "a lighthouse on a cliff at dusk, dramatic sky, detailed"
NEGATIVE = "blurry, low quality"
# Dense fp16/bf16 tensor-core peaks (vendor figures) by device name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}


def build_sdxl(device: torch.device, dtype: torch.dtype, *, refiner: bool) -> SDXLComponents:
    """Full-size SDXL (or the refiner) from the shipped configs, randomly initialised on
    ``device`` (fast on a GPU), in ``dtype`` (the VAE in bfloat16 on CUDA)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    folder = REFINER_CONFIG_DIR if refiner else SDXL_CONFIG_DIR
    torch.manual_seed(SEED + int(refiner))
    vae_dtype = torch.bfloat16 if device.type == "cuda" else dtype
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text_2 = CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
        )
        text = (
            None
            if refiner
            else CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        )
    modules: list[torch.nn.Module] = [unet, text_2] + ([text] if text is not None else [])
    for module in modules:
        torch.nn.Module.to(module, dtype)
    vae.to(vae_dtype)
    for part in (*modules, vae):
        part.eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(SDXL_CONFIG_DIR / "tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(SDXL_CONFIG_DIR / "tokenizer_2")
    name = REFINER if refiner else BASE
    return SDXLComponents(name, unet, vae, text, text_2, tokenizer, tokenizer_2)


_MASTERS: dict[bool, SDXLComponents] = {}


def random_components(device: torch.device, dtype: torch.dtype, *, refiner: bool) -> SDXLComponents:
    """A copy, in system memory, of the one random SDXL (or refiner) this run uses: built once
    (on the GPU, in seconds), so every engine in the table gets the same weights."""
    if refiner not in _MASTERS:
        master = build_sdxl(device, dtype, refiner=refiner)
        parts = (master.unet, master.vae, master.text_encoder, master.text_encoder_2)
        for part in parts:
            if part is not None:
                torch.nn.Module.to(part, torch.device("cpu"))
        _MASTERS[refiner] = master
        release()
    return copy.deepcopy(_MASTERS[refiner])


class RandomModels(ModelManager):
    """The model manager with the checkpoint load replaced by a copy of the random model (or
    the tiny one): caching and the memory plan's placement are the engine's own."""

    def __init__(self, engine: Engine, *, tiny: bool) -> None:
        super().__init__(engine.config, engine.device, engine.dtype, engine.placer)
        self.tiny = tiny

    def _load_base(
        self, name: str, path: Path, mtime_ns: int, *, refiner: bool = False
    ) -> _LoadedBase:
        if self.tiny:
            components = build_tiny_refiner() if refiner else build_tiny_sdxl()
        else:
            components = random_components(self.device, self.dtype, refiner=refiner)
        components.name = name
        return self._adopt(components, name, mtime_ns, refiner=refiner)


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Row:
    name: str
    seconds_per_image: float | None = None
    steps_per_second: float | None = None
    peak_gib: float | None = None
    unet_fraction: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Setup:
    device: torch.device
    dtype: torch.dtype
    tiny: bool
    side: int
    speed_steps: int
    tasks: int
    models: Path
    peak_tflops: float | None
    rows: list[Row] = field(default_factory=list)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    @contextmanager
    def measured(self) -> Iterator[dict[str, float]]:
        out: dict[str, float] = {}
        release()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.sync()
        start = time.perf_counter()
        yield out
        self.sync()
        out["seconds"] = time.perf_counter() - start
        if self.device.type == "cuda":
            out["peak"] = torch.cuda.max_memory_allocated() / GIB


def make_engine(setup: Setup, *, budget: int | None = None, batch: bool | None = None) -> Engine:
    config = EngineConfig(
        models_dir=setup.models,
        styles_dir=ROOT / "styles",
        device=str(setup.device),
        allow_downloads=False,
        vram="auto",
        vram_budget=budget,
        batch_images=batch,
        compile=False,
    )
    engine = Engine(config)
    engine.manager = RandomModels(engine, tiny=setup.tiny)
    return engine


def speed_request(setup: Setup, **changes: Any) -> EngineRequest:
    request = EngineRequest(
        base_model_name=BASE,
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        width=setup.side,
        height=setup.side,
        seed=SEED,
        overwrite_step=setup.speed_steps,
        sampler_name="dpmpp_2m",
        scheduler_name="karras",
        guidance_scale=4.0,
        disable_preview=True,
    )
    return replace(request, **changes)


def lightning_request(setup: Setup) -> EngineRequest:
    return speed_request(
        setup,
        overwrite_step=4,
        sampler_name="euler",
        scheduler_name="sgm_uniform",
        guidance_scale=1.0,
        sharpness=0.0,
        adaptive_cfg=1.0,
    )


def _step_rate(times: list[float]) -> float | None:
    if len(times) < 2:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


def engine_row(setup: Setup, engine: Engine, request: EngineRequest, name: str) -> Row:
    engine.generate(replace(request, overwrite_step=2))  # load, warm the kernels
    steps: list[float] = []

    def on_event(event: EngineEvent) -> None:
        if event.message.startswith("Sampling step"):
            steps.append(time.perf_counter())

    try:
        with setup.measured() as out:
            engine.generate(request, on_event=on_event)
    except Exception as exc:  # an OOM under a cap is a result to report, not a crash
        return Row(name, note=f"FAILED: {exc}"[:90])
    plan = engine.placer.plan
    note = f"plan {plan.level}" if plan else ""
    return Row(name, out["seconds"], _step_rate(steps), out.get("peak"), note=note)


def diffusers_row(setup: Setup, engine: Engine, request: EngineRequest, name: str) -> Row:
    from diffusers import (
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
    )

    components = engine.manager.load_base(BASE)
    if request.sampler_name == "euler":
        scheduler = EulerDiscreteScheduler.from_pretrained(
            SDXL_CONFIG_DIR / "scheduler", timestep_spacing="trailing"
        )
    else:
        scheduler = DPMSolverMultistepScheduler.from_pretrained(
            SDXL_CONFIG_DIR / "scheduler",
            algorithm_type="dpmsolver++",
            solver_order=2,
            use_karras_sigmas=True,
        )
    engine.placer.offload_all()
    pipe = StableDiffusionXLPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        text_encoder_2=components.text_encoder_2,
        tokenizer=components.tokenizer,
        tokenizer_2=components.tokenizer_2,
        unet=components.unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    steps: list[float] = []

    def on_step(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        steps.append(time.perf_counter())
        return kwargs

    def run(count: int) -> None:
        generator = torch.Generator("cpu").manual_seed(SEED)
        pipe(
            prompt=PROMPT,
            negative_prompt=NEGATIVE if request.guidance_scale > 1 else None,
            num_inference_steps=count,
            guidance_scale=request.guidance_scale,
            height=setup.side,
            width=setup.side,
            generator=generator,
            callback_on_step_end=on_step,
        )

    with torch.inference_mode():
        run(2)
        steps.clear()
        with setup.measured() as out:
            run(request.overwrite_step)
    return Row(name, out["seconds"], _step_rate(steps), out.get("peak"), note="diffusers")


def unet_flops(setup: Setup, engine: Engine, rows: int) -> tuple[float, float]:
    """(FLOPs of one UNet call on ``rows`` latents, its measured seconds)."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = engine.manager.load_base(BASE).unet
    engine.placer.ensure("unet")
    device = setup.device
    latent = setup.side // 8
    dtype = unet.dtype
    text_width = int(unet.config.cross_attention_dim)
    pooled = int(unet.config.projection_class_embeddings_input_dim) - 6 * int(
        unet.config.addition_time_embed_dim
    )
    sample = torch.randn(rows, 4, latent, latent, device=device, dtype=dtype)
    embeds = torch.randn(rows, 77, text_width, device=device, dtype=dtype)
    added = {
        "text_embeds": torch.randn(rows, pooled, device=device, dtype=dtype),
        "time_ids": torch.tensor([[setup.side, setup.side, 0, 0, setup.side, setup.side]] * rows)
        .to(device)
        .to(dtype),
    }
    t = torch.full((rows,), 500.0, device=device)

    def call() -> None:
        unet(sample, t, encoder_hidden_states=embeds, added_cond_kwargs=added)

    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            call()
        flops = float(counter.get_total_flops())
        call()
        times = []
        for _ in range(5 if setup.tiny else 10):
            setup.sync()
            start = time.perf_counter()
            call()
            setup.sync()
            times.append(time.perf_counter() - start)
    return flops, statistics.median(times)


def fraction_row(setup: Setup, engine: Engine) -> Row:
    flops, seconds = unet_flops(setup, engine, rows=2)
    achieved = flops / seconds / 1e12
    row = Row("UNet call (CFG batch 2)", seconds_per_image=None)
    row.extra = {"tflop": flops / 1e12, "ms": seconds * 1000, "tflops": achieved}
    if setup.peak_tflops:
        row.unet_fraction = achieved / setup.peak_tflops
    row.note = (
        f"{flops / 1e9:.2f} GFLOP/call, {seconds * 1000:.1f} ms, {achieved * 1000:.1f} GFLOP/s"
    )
    return row


def batching_rows(setup: Setup) -> list[Row]:
    rows = []
    four = speed_request(setup, image_number=4)
    for batched in (False, True):
        engine = make_engine(setup, batch=batched)
        engine.generate(replace(four, image_number=1, overwrite_step=2))
        with setup.measured() as out:
            engine.generate(four)
        label = "batched" if batched else "one by one"
        row = Row(f"Speed, image_number 4, {label}", out["seconds"] / 4, peak_gib=out.get("peak"))
        row.note = f"{4 / out['seconds']:.3f} images/s"
        rows.append(row)
        del engine
        release()
    n = setup.tasks
    tasks = [
        speed_request(setup, seed=SEED + 17 * k, prompt=f"{PROMPT}, view {k}") for k in range(n)
    ]
    engine = make_engine(setup, batch=True)
    engine.generate(replace(tasks[0], overwrite_step=2))
    with setup.measured() as out:
        for task in tasks:
            engine.generate(task)
    rows.append(
        Row(
            f"{n} tasks one by one",
            out["seconds"] / n,
            peak_gib=out.get("peak"),
            note=f"{n / out['seconds']:.3f} images/s",
        )
    )
    with setup.measured() as out:
        results = engine.generate_many([BatchItem(task) for task in tasks])
    failed = [r for r in results if isinstance(r, Exception)]
    note = f"{n / out['seconds']:.3f} images/s" + (f", {len(failed)} failed" if failed else "")
    rows.append(
        Row(
            f"{n} tasks batched (generate_many)",
            out["seconds"] / n,
            peak_gib=out.get("peak"),
            note=note,
        )
    )
    return rows


def capped_row(setup: Setup, cap_gib: float) -> Row:
    name = f"Speed {setup.side}², capped {cap_gib:g} GB, auto"
    budget = None
    if setup.device.type == "cuda":
        total = torch.cuda.get_device_properties(setup.device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 1e9 / total), setup.device)
        budget = int(cap_gib * 1e9) - torch.cuda.memory_allocated(setup.device)
    else:
        budget = int(cap_gib * 1e9)  # simulated: the plan acts as on a card of this size
    try:
        engine = make_engine(setup, budget=budget)
        row = engine_row(setup, engine, speed_request(setup), name)
        del engine
    finally:
        release()
        if setup.device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, setup.device)
    return row


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(setup: Setup) -> str:
    lines = [
        f"device: {describe(setup.device)}; {setup.side}x{setup.side}; dtype {setup.dtype}; "
        f"peak {setup.peak_tflops or 'n/a'} TFLOP/s",
        "",
        "| run | s/image | steps/s | peak GiB | UNet % of peak | note |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in setup.rows:
        fraction = None if row.unet_fraction is None else row.unet_fraction * 100
        lines.append(
            f"| {row.name} | {fmt(row.seconds_per_image, '.3f')} | "
            f"{fmt(row.steps_per_second, '.2f')} | {fmt(row.peak_gib, '.2f')} | "
            f"{fmt(fraction, '.1f')} | {row.note} |"
        )
    return "\n".join(lines)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"cpu ({torch.get_num_threads()} threads), torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="demo-sized model on the CPU")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--skip", default="", help="comma list: diffusers,caps,batching")
    parser.add_argument("--speed-steps", type=int, default=30, help="Speed's step count")
    parser.add_argument("--tasks", type=int, default=8, help="queued tasks in the batching rows")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    if args.tiny:
        device, dtype, side = torch.device("cpu"), torch.float32, 64
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: use --tiny on a CPU")
        device, dtype, side = torch.device("cuda"), torch.float16, 1024
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    torch.set_grad_enabled(False)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        (models / "checkpoints").mkdir()
        for name in (BASE, REFINER):
            (models / "checkpoints" / name).write_bytes(b"random weights, built in memory")
        setup = Setup(device, dtype, args.tiny, side, args.speed_steps, args.tasks, models, peak)
        run_all(setup, skip)
    text = table(setup)
    text += f"\n\ntotal {time.perf_counter() - started:.0f} s"
    print(text, flush=True)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


def attempt(setup: Setup, label: str, work: Callable[[], Row | list[Row]]) -> None:
    """Run one measurement; a failure becomes its row instead of costing the table."""
    print(f"... {label}", flush=True)
    try:
        result = work()
        setup.rows.extend(result if isinstance(result, list) else [result])
    except Exception as exc:
        setup.rows.append(Row(label, note=f"FAILED: {type(exc).__name__}: {exc}"[:100]))
    release()


def run_all(setup: Setup, skip: set[str]) -> None:
    engines = [make_engine(setup)]
    side = setup.side
    speed, lightning = speed_request(setup), lightning_request(setup)
    refined = speed_request(setup, refiner_model_name=REFINER, refiner_switch=0.8)
    runs: list[tuple[str, Callable[[Engine], Row]]] = [
        (
            f"Speed {side}², {setup.speed_steps} steps, engine",
            lambda e: engine_row(setup, e, speed, ""),
        ),
        (
            f"Speed {side}², {setup.speed_steps} steps, diffusers",
            lambda e: diffusers_row(setup, e, speed, ""),
        ),
        (f"Lightning {side}², 4 steps, engine", lambda e: engine_row(setup, e, lightning, "")),
        (
            f"Lightning {side}², 4 steps, diffusers",
            lambda e: diffusers_row(setup, e, lightning, ""),
        ),
        ("UNet call (CFG batch 2)", lambda e: fraction_row(setup, e)),
        (f"Speed {side}² + refiner at 0.8, engine", lambda e: engine_row(setup, e, refined, "")),
    ]
    for label, measure in runs:
        if "diffusers" in skip and "diffusers" in label:
            continue
        attempt(setup, label, _bound(measure, engines[0], label))
    engines[0].clean_vram()
    engines.clear()
    release()
    if "caps" not in skip:
        for cap in (8.0, 6.0):
            attempt(setup, f"cap {cap:g} GB", _capped(setup, cap))
    if "batching" not in skip:
        attempt(setup, "batching", lambda: batching_rows(setup))


def _bound(measure: Callable[[Engine], Row], engine: Engine, name: str) -> Callable[[], Row]:
    def work() -> Row:
        row = measure(engine)
        row.name = name
        return row

    return work


def _capped(setup: Setup, cap: float) -> Callable[[], Row]:
    return lambda: capped_row(setup, cap)


if __name__ == "__main__":
    raise SystemExit(main())

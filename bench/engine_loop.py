"""Cost per sampling step of our loop versus a plain diffusers StableDiffusionXLPipeline call.

Both run on the same demo components (or ``--size`` pixels of it), the same number of steps, the
same Euler steps on the same Karras sigmas, with classifier-free guidance batched [neg; pos]. Ours
adds what Fooocus adds: sharpness (bilateral filter), adaptive CFG (guidance above the mimic
scale), and the ADM size-conditioning switch. Each side is timed at two step counts and the
per-step cost is the difference divided by the extra steps, so fixed costs (prompt encoding,
latent set-up) cancel out. Prints both figures and their ratio.

    .venv/bin/python bench/engine_loop.py [--device cpu|cuda] [--size 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

from engine.config import EngineConfig
from engine.demo.writer import DEMO_CHECKPOINT, create_demo_models
from engine.guidance import AdmTimeIds, FooocusDenoiser, GuidanceSettings
from engine.models.components import SDXL_CONFIG_DIR, SDXLComponents
from engine.models.manager import ModelManager
from engine.prompts.encoding import PromptEncoder
from engine.sampling import build_sigmas, initial_noise, sample, schedule_for

STEP_COUNTS = (10, 30)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(run: Callable[[int], object], steps: int, device: torch.device) -> float:
    # On the CPU the process's CPU time: one torch thread does the work, and time spent
    # descheduled by other jobs on a shared machine is not counted.
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    _sync(device)
    start = clock()
    run(steps)
    _sync(device)
    return clock() - start


def _per_step_pair(
    ours: Callable[[int], object],
    plain: Callable[[int], object],
    repeats: int,
    device: torch.device,
) -> tuple[float, float]:
    """Per-step cost of each side. The sides alternate run by run and each keeps its fastest
    time per step count: on a shared CPU other processes only ever add time, so the minimum is
    the figure least disturbed, and alternating exposes both sides to the same disturbances."""
    for run in (ours, plain):
        run(STEP_COUNTS[0])  # warm-up
    best: dict[tuple[int, int], float] = {}
    for _ in range(repeats):
        for side, run in enumerate((ours, plain)):
            for steps in STEP_COUNTS:
                elapsed = _timed(run, steps, device)
                key = (side, steps)
                best[key] = min(best.get(key, elapsed), elapsed)
    low, high = STEP_COUNTS
    per = [(best[(side, high)] - best[(side, low)]) / (high - low) for side in (0, 1)]
    return per[0], per[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.set_grad_enabled(False)
    if device.type == "cpu":
        torch.set_num_threads(1)  # a tiny model on a shared CPU: threads only add jitter
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        create_demo_models(models)
        config = EngineConfig(models_dir=models, styles_dir=models / "styles", device=args.device)
        components: SDXLComponents = ModelManager(config, device, dtype).load_base(DEMO_CHECKPOINT)
        ours, plain = _measure(components, args.size, args.repeats, device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu, 1 thread"
    print(f"device {device} ({name})")
    print(f"image {args.size}x{args.size}, Euler/Karras, CFG 10 (mimic 7), sharpness 2, ADM on")
    print(f"our loop:           {ours * 1000:.3f} ms/step")
    print(f"diffusers pipeline: {plain * 1000:.3f} ms/step")
    print(f"ratio ours/diffusers: {ours / plain:.3f}")


def _measure(
    components: SDXLComponents, size: int, repeats: int, device: torch.device, dtype: torch.dtype
) -> tuple[float, float]:
    encoder = PromptEncoder(components, clip_skip=2)
    positive = encoder.encode(["a lighthouse at dusk"])
    negative = encoder.encode(["blurry"])
    schedule, rule = schedule_for("karras")
    settings = GuidanceSettings(guidance_scale=10.0, sharpness=2.0, adaptive_cfg=7.0)
    latent = initial_noise(0, (1, 4, size // 8, size // 8)).to(device)

    def ours(steps: int) -> object:
        sigmas = build_sigmas(rule, steps, schedule)
        denoiser = FooocusDenoiser(
            components.unet,
            schedule,
            settings,
            positive,
            negative,
            AdmTimeIds.for_size(size, size, 1.5),
            AdmTimeIds.for_size(size, size, 0.8),
        )
        x = latent * float(sigmas[0] ** 2 + 1) ** 0.5
        return sample("euler", denoiser, x, sigmas, seed=0)

    scheduler = EulerDiscreteScheduler.from_pretrained(
        SDXL_CONFIG_DIR / "scheduler", use_karras_sigmas=True
    )
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
    embeds = dict(
        prompt_embeds=positive.embeds.to(device, dtype),
        pooled_prompt_embeds=positive.pooled.to(device, dtype),
        negative_prompt_embeds=negative.embeds.to(device, dtype),
        negative_pooled_prompt_embeds=negative.pooled.to(device, dtype),
    )

    def plain(steps: int) -> object:
        return pipe(
            **embeds,
            num_inference_steps=steps,
            guidance_scale=10.0,
            height=size,
            width=size,
            latents=latent.to(dtype),
            output_type="latent",
        )

    with torch.inference_mode():
        return _per_step_pair(ours, plain, repeats, device)


if __name__ == "__main__":
    main()

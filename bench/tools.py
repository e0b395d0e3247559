"""What each image tool costs per call on this machine with the demo models.

Writes the demo model set to a scratch folder, builds a CPU engine on it and times, after one
warm-up call that loads the model: describe-image (Photo, Anime), generate_mask for every
background-removal model and for sam (GroundingDINO + SAM, and the debug boxes), and enhance
of a 64x64 image with one region (Lightning). Median and min of R runs, milliseconds.

    OMP_NUM_THREADS=1 .venv/bin/python bench/tools.py [--runs 5] [--side 256] [--threads 1]

The demo models are tiny, so the figures measure the flow around them (pre/post-processing,
the ONNX sessions, transformers' processors), not what the real models cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _time(call: Callable[[], object], runs: int) -> tuple[float, float, float]:
    start = time.perf_counter()
    call()  # warm-up: loads the model
    first = time.perf_counter() - start
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return first * 1000, statistics.median(times) * 1000, min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--side", type=int, default=256, help="input image side for the tools")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from engine import Engine
    from engine.config import EngineConfig
    from engine.demo.writer import DEMO_CHECKPOINT, create_demo_models
    from engine.tools.types import (
        REMBG_MODELS,
        DescribeRequest,
        EnhanceRegion,
        EnhanceSpec,
        MaskRequest,
    )
    from engine.types import EngineRequest

    torch.set_num_threads(args.threads)
    models = Path(tempfile.mkdtemp(prefix="bench-tools-"))
    started = time.perf_counter()
    create_demo_models(models)
    print(f"demo model set written in {time.perf_counter() - started:.1f} s")
    engine = Engine(
        EngineConfig(
            models_dir=models, styles_dir=ROOT / "styles", device="cpu", allow_downloads=False
        )
    )
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (args.side, args.side, 3), dtype=np.uint8))
    cases: list[tuple[str, Callable[[], object]]] = [
        ("describe Photo (BLIP)", lambda: engine.describe(DescribeRequest(image, "Photo"))),
        ("describe Anime (WD14)", lambda: engine.describe(DescribeRequest(image, "Anime"))),
    ]
    for model in REMBG_MODELS:
        request = MaskRequest(image, model)
        cases.append((f"mask {model}", partial(engine.generate_mask, request)))
    sam = MaskRequest(image, "sam", dino_prompt_text="cat", box_threshold=0.0)
    cases.append(("mask sam (10 boxes)", lambda: engine.generate_mask(sam)))
    debug = MaskRequest(image, "sam", dino_prompt_text="cat", box_threshold=0.0, dino_debug=True)
    cases.append(("mask sam dino_debug", lambda: engine.generate_mask(debug)))
    small = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    enhance = EngineRequest(
        base_model_name=DEMO_CHECKPOINT,
        width=64,
        height=64,
        performance_selection="Lightning",
        performance_lora_name="demo_lightning_4step_lora.safetensors",
        enhance=EnhanceSpec(input_image=small, regions=(EnhanceRegion(mask_model="u2netp"),)),
    )
    cases.append(("enhance 1 region, 64 px", lambda: engine.generate(enhance)))
    print(f"{'case':28} {'first ms':>9} {'median ms':>10} {'min ms':>8}   ({args.side} px input)")
    for name, call in cases:
        first, median, low = _time(call, args.runs)
        print(f"{name:28} {first:9.1f} {median:10.1f} {low:8.1f}")


if __name__ == "__main__":
    main()

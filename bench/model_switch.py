"""What switching models costs: the model manager reloads only what changed.

On the demo model set (CPU): the first base load, the same base again (cached), a LoRA switch (only
the weights the old and new LoRA sets touch are restored and re-patched), a VAE switch, a base
switch, the refiner's first load and a refiner reuse, and clean_vram. Each figure is the fastest of
``--repeats`` runs (a shared CPU only ever adds time). On a GPU (``--device cuda``) the same steps
include the moves the memory plan makes.

    .venv/bin/python bench/model_switch.py [--device cpu|cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import Engine, EngineConfig  # noqa: E402
from engine.demo.writer import (  # noqa: E402
    DEMO_CHECKPOINT,
    DEMO_DIFFUSERS,
    DEMO_LORAS,
    DEMO_REFINER,
    DEMO_VAE,
    create_demo_models,
)
from engine.models.manager import ModelManager  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lora_a, lora_b = list(DEMO_LORAS)[:2]
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        create_demo_models(models)
        config = EngineConfig(
            models_dir=models, styles_dir=ROOT / "styles", device=args.device, vram="auto"
        )
        rows: list[tuple[str, float]] = []

        def fresh() -> tuple[Engine, ModelManager]:
            engine = Engine(config)
            assert isinstance(engine.manager, ModelManager)
            return engine, engine.manager

        def best(label: str, setup: Callable[[], Callable[[], object]]) -> None:
            times = []
            for _ in range(args.repeats):
                work = setup()
                start = time.perf_counter()
                work()
                times.append(time.perf_counter() - start)
            rows.append((label, min(times)))

        def first_load() -> Callable[[], object]:
            _, manager = fresh()
            return lambda: manager.load_base(DEMO_CHECKPOINT)

        def loaded(**kwargs: object) -> ModelManager:
            _, manager = fresh()
            manager.load_base(DEMO_CHECKPOINT, **kwargs)  # type: ignore[arg-type]
            return manager

        best("first load of the base", first_load)
        best("same base again (cached)", lambda: _then(loaded(), DEMO_CHECKPOINT))
        best(
            "LoRA switch (A -> B)",
            lambda: _then(loaded(loras=[(lora_a, 1.0)]), DEMO_CHECKPOINT, loras=[(lora_b, 1.0)]),
        )
        best(
            "LoRA weight change (A 1.0 -> 0.5)",
            lambda: _then(loaded(loras=[(lora_a, 1.0)]), DEMO_CHECKPOINT, loras=[(lora_a, 0.5)]),
        )
        best("VAE switch", lambda: _then(loaded(), DEMO_CHECKPOINT, vae_name=DEMO_VAE))
        best("base switch (file -> diffusers folder)", lambda: _then(loaded(), DEMO_DIFFUSERS))

        def refiner_first() -> Callable[[], object]:
            manager = loaded()
            return lambda: manager.load_refiner(DEMO_REFINER)

        def refiner_again() -> Callable[[], object]:
            manager = loaded()
            manager.load_refiner(DEMO_REFINER)
            return lambda: manager.load_refiner(DEMO_REFINER)

        best("refiner, first load", refiner_first)
        best("refiner again (cached)", refiner_again)

        def clean() -> Callable[[], object]:
            engine, manager = fresh()
            manager.load_base(DEMO_CHECKPOINT)
            return engine.clean_vram

        best("clean_vram", clean)
    print(f"device {args.device}, demo model set, fastest of {args.repeats}")
    for label, seconds in rows:
        print(f"{label:<42} {seconds * 1000:9.2f} ms")


def _then(manager: ModelManager, name: str, **kwargs: object) -> Callable[[], object]:
    return lambda: manager.load_base(name, **kwargs)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()

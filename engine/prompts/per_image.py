"""The per-image prompt work of a request (reference §5.1): wildcards, arrays, styles, expansion.

Every image of a request gets its own :class:`ImageTask`, seeded with its own seed: wildcards and
``Random Style`` draw from ``random.Random(seed)``, arrays cycle with the image index, and the
Fooocus V2 expansion is sampled with the seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.prompts.styles import FOOOCUS_V2, StyleLibrary
from engine.prompts.syntax import Wildcards, apply_arrays

Expand = Callable[[str, int], str]
"""``expand(main_prompt, seed) -> expanded prompt`` (the Fooocus V2 model)."""


@dataclass(frozen=True)
class PromptLines:
    """A request's prompt text split into lines: main line and extra lines of each side."""

    main: str
    extras: tuple[str, ...]
    negative_main: str
    negative_extras: tuple[str, ...]


@dataclass(frozen=True)
class ImageTask:
    """What one image is conditioned on."""

    index: int
    seed: int
    prompt: str
    """The main line after wildcards and arrays (what the expansion and styles saw)."""
    negative_prompt: str
    positive: list[str]
    """Positive elements: [raw prompt?] + style lines + extra lines (+ expansion, last)."""
    negative: list[str]
    pooled_count: int
    """How many leading positive elements make the pooled vector (all but the expansion)."""
    expansion: str
    styles: list[str]
    """The styles applied, as recorded (``Fooocus V2`` first when used)."""
    log_prompt: str
    log_negative_prompt: str


def build_image_task(
    *,
    index: int,
    seed: int,
    lines: PromptLines,
    styles: Sequence[str],
    library: StyleLibrary,
    wildcards: Wildcards,
    in_order: bool,
    expand: Expand | None,
) -> ImageTask:
    """Resolve the prompt elements of image ``index`` (seed ``seed``); see the module docstring.

    ``expand`` is None when the request has no Fooocus V2 (or its main line is empty).
    """
    rng = random.Random(seed)

    def wild(text: str) -> str:
        return wildcards.apply(text, rng, index, in_order=in_order)

    prompt = apply_arrays(wild(lines.main), index)
    negative_prompt = wild(lines.negative_main)
    extras = [wild(t) for t in lines.extras]
    negative_extras = [wild(t) for t in lines.negative_extras]
    selected = [s for s in styles if s != FOOOCUS_V2]
    positive, negative, applied = library.apply(selected, prompt, negative_prompt, rng)
    positive = [p for p in positive + extras if p] or [prompt]
    negative = [n for n in negative + negative_extras if n] or [negative_prompt]
    pooled_count = len(positive)
    expansion = ""
    if expand is not None and FOOOCUS_V2 in styles and prompt:
        expansion = expand(prompt, seed)
        positive = [*positive, expansion]
    return ImageTask(
        index=index,
        seed=seed,
        prompt=prompt,
        negative_prompt=negative_prompt,
        positive=positive,
        negative=negative,
        pooled_count=pooled_count,
        expansion=expansion,
        styles=[FOOOCUS_V2, *applied] if FOOOCUS_V2 in styles else applied,
        log_prompt="\n".join([prompt, *extras]),
        log_negative_prompt="\n".join([negative_prompt, *negative_extras]),
    )

"""Prompt styles: templates loaded from JSON files, applied in the user's order (reference §5.4).

A style file is a JSON list of ``{"name", "prompt", "negative_prompt"}``; ``{prompt}`` in the
positive template is replaced by the user's main line. Names are normalised the way Fooocus does
("sai-3d-model" → "SAI 3D Model"), so style files written for Fooocus work unchanged.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.types import EngineInputError

FOOOCUS_V2 = "Fooocus V2"
RANDOM_STYLE = "Random Style"
# Our shipped files load last, in this order, so they win over same-named user styles (Fooocus
# loads its built-in files last too).
SHIPPED_STYLE_FILES: tuple[str, ...] = ("fooocus.json", "common.json")


@dataclass(frozen=True)
class Style:
    """One style: a positive template (may hold ``{prompt}``) and a negative text."""

    name: str
    prompt: str = ""
    negative_prompt: str = ""


def normalize_style_name(name: str) -> str:
    """Fooocus's style-name normalisation: '-' → ' ', words capitalised, a few acronyms fixed."""
    words = name.replace("-", " ").split(" ")
    text = " ".join(w[:1].upper() + w[1:].lower() for w in words)
    for old, new in (("3d", "3D"), ("Sai", "SAI"), ("Mre", "MRE"), ("(s", "(S")):
        text = text.replace(old, new)
    return text


def load_styles(folder: Path) -> dict[str, Style]:
    """Every style in every ``*.json`` file of ``folder``; later files override earlier names.

    User files load first (sorted by name), the shipped files last.
    """
    files = sorted(p for p in folder.glob("*.json") if p.name not in SHIPPED_STYLE_FILES)
    files += [folder / name for name in SHIPPED_STYLE_FILES if (folder / name).is_file()]
    styles: dict[str, Style] = {}
    for path in files:
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"style file {path} is not valid JSON: {exc}") from exc
        if not isinstance(entries, list):
            raise ValueError(f"style file {path} must hold a JSON list")
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ValueError(f"style file {path} has an entry without a name: {entry!r}")
            name = normalize_style_name(entry["name"])
            styles[name] = Style(
                name, str(entry.get("prompt", "")), str(entry.get("negative_prompt", ""))
            )
    return styles


class StyleLibrary:
    """The loaded styles and the rules for applying a selection of them."""

    def __init__(self, styles: dict[str, Style]) -> None:
        self.styles = styles

    @classmethod
    def from_folder(cls, folder: Path) -> StyleLibrary:
        """Load every style file in ``folder`` (an absent folder gives no styles)."""
        return cls(load_styles(folder) if folder.is_dir() else {})

    def names(self) -> list[str]:
        """Selectable names in Fooocus's order: the two pseudo-styles, then the file styles."""
        return [FOOOCUS_V2, RANDOM_STYLE, *self.styles]

    def check(self, selections: Sequence[str]) -> None:
        """Raise the typed error for a selection this engine cannot apply."""
        for name in selections:
            if name == FOOOCUS_V2:
                continue  # the prompt expansion, applied by the engine after the styles
            if name == RANDOM_STYLE:
                if not self.styles:
                    raise EngineInputError("style_selections", "'Random Style' needs styles")
                continue
            if name not in self.styles:
                raise EngineInputError("style_selections", f"unknown style '{name}'")

    def apply(
        self,
        selections: Sequence[str],
        prompt: str,
        negative_prompt: str,
        rng: random.Random,
    ) -> tuple[list[str], list[str], list[str]]:
        """(positive elements, negative elements, the styles applied) for one image.

        Each style adds its template lines with ``{prompt}`` filled in; when no selected style had
        a ``{prompt}`` placeholder the raw prompt goes first on its own. The user's negative comes
        after the style negatives. ``Random Style`` draws from ``rng`` (seeded per image).
        """
        self.check(selections)
        positive: list[str] = []
        negative: list[str] = []
        applied: list[str] = []
        placeholder_used = False
        for name in selections:
            if name == FOOOCUS_V2:
                continue
            if name == RANDOM_STYLE:
                name = rng.choice(list(self.styles))
            style = self.styles[name]
            applied.append(name)
            placeholder_used = placeholder_used or "{prompt}" in style.prompt
            positive += style.prompt.replace("{prompt}", prompt).splitlines()
            negative += style.negative_prompt.splitlines()
        if not placeholder_used:
            positive.insert(0, prompt)
        negative.append(negative_prompt)
        return positive, negative, applied

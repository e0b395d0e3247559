"""Prompt text syntax resolved before styles: LoRA tags, wildcards and arrays (reference §5.1-5.3).

* ``<lora:NAME:WEIGHT>`` in the main line adds the LoRA file whose stem is NAME; the tag leaves
  the text, and the line is re-joined as comma-separated phrases.
* ``__name__`` is replaced by a line of ``wildcards/**/name.txt`` (random per image, or in order);
  replacements may hold further placeholders, resolved breadth-first up to 64 rounds.
* ``[[a,b,c]]`` picks one option per image, cycling through every combination of the groups.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path

LORA_TAG = re.compile(r"<lora:([^:>]+):([+-]?(?:\d+(?:\.\d*)?|\.\d+))>")
WILDCARD = re.compile(r"__([\w-]+)__")
ARRAY = re.compile(r"\[\[(.*?)\]\]")
WILDCARD_MAX_DEPTH = 64


def cleanup_prompt(text: str) -> str:
    """Collapse runs of spaces and commas, trim each comma-separated phrase, join with ", "."""
    text = re.sub(" +", " ", text)
    text = re.sub(",+", ",", text)
    return ", ".join(p.strip() for p in text.split(",") if p.strip())


def extract_lora_tags(
    prompt: str, lora_files: Sequence[str]
) -> tuple[str, list[tuple[str, float]]]:
    """(prompt without its LoRA tags, cleaned; [(file, weight)] of the tags naming known files).

    A tag names a file by its stem; a tag naming no file in ``lora_files`` is dropped from the
    text and ignored, as in Fooocus.
    """
    by_stem = {Path(name).stem: name for name in lora_files}
    found: list[tuple[str, float]] = []
    for match in LORA_TAG.finditer(prompt):
        name = by_stem.get(match.group(1))
        if name is not None:
            found.append((name, float(match.group(2))))
    return cleanup_prompt(LORA_TAG.sub("", prompt)), found


def merge_prompt_loras(
    loras: Sequence[tuple[str, float]], tagged: Sequence[tuple[str, float]], limit: int
) -> tuple[tuple[str, float], ...]:
    """The request's LoRAs, then the prompt's new ones (not already listed), cut to ``limit``."""
    names = {name for name, _ in loras}
    new: list[tuple[str, float]] = []
    for item in tagged:
        if item[0] in names or item in new:
            continue
        new.append(item)
    return tuple([*loras, *new][:limit])


class Wildcards:
    """The wildcard files of one folder (found recursively by file stem)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files: dict[str, Path] | None = None

    def files(self) -> dict[str, Path]:
        """``{stem: path}`` of every ``*.txt`` under the folder (the first in sorted order wins)."""
        if self._files is None:
            found: dict[str, Path] = {}
            if self.folder.is_dir():
                for path in sorted(self.folder.rglob("*.txt")):
                    found.setdefault(path.stem, path)
            self._files = found
        return self._files

    def words(self, name: str) -> list[str]:
        """The non-empty lines of wildcard ``name`` (empty when the file is missing)."""
        path = self.files().get(name)
        if path is None:
            return []
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line]

    def apply(self, text: str, rng: random.Random, index: int, *, in_order: bool) -> str:
        """Replace every ``__name__`` in ``text``; each occurrence draws independently.

        ``in_order`` takes line ``index mod len`` (``index`` = the image's index) instead of a
        random line. A missing or empty file leaves the bare name.
        """
        for _ in range(WILDCARD_MAX_DEPTH):
            names = WILDCARD.findall(text)
            if not names:
                return text
            for name in names:
                words = self.words(name)
                if not words:
                    text = text.replace(f"__{name}__", name)
                    continue
                word = words[index % len(words)] if in_order else rng.choice(words)
                text = text.replace(f"__{name}__", word, 1)
        return text


def apply_arrays(text: str, index: int) -> str:
    """Replace each ``[[a,b,...]]`` group by one option: image ``index`` takes combination
    ``index mod (product of the group sizes)``, the first group varying fastest."""
    groups = ARRAY.findall(text)
    if not groups:
        return text
    options = [group.split(",") for group in groups]
    total = 1
    for choice in options:
        total *= len(choice)
    position = index % total
    for group, choice in zip(groups, options, strict=True):
        text = text.replace(f"[[{group}]]", choice[position % len(choice)], 1)
        position //= len(choice)
    return text


def safe_str(text: str) -> str:
    """Collapse double spaces and strip ``,. \\r\\n`` at both ends (Fooocus's cleaning)."""
    for _ in range(16):
        text = text.replace("  ", " ")
    return text.strip(",. \r\n")


def split_lines(text: str) -> tuple[str, list[str]]:
    """The main line and the extra lines of a multi-line prompt, cleaned, empty lines dropped."""
    lines = [line for line in (safe_str(raw) for raw in text.splitlines()) if line]
    if not lines:
        return "", []
    return lines[0], lines[1:]

"""Prompt styles: templates loaded from JSON files, applied in the user's order (reference §5.4).

A style file is a JSON list of ``{"name", "prompt", "negative_prompt"}``; ``{prompt}`` in the
positive template is replaced by the user's main line. Names are normalised the way Fooocus does
("sai-3d-model" → "SAI 3D Model"), so style files written for Fooocus work unchanged.

Which files count, and in which order (Fooocus's rules, with our starter set as a stand-in):

- Fooocus's own six files (:data:`FOOOCUS_STYLE_FILES`, 277 styles in 2.5.5) are not shipped with
  this project. A preset's ``style_downloads`` names them with their SHA-256; the first time a
  process reads the style list (a request's style check, ``GET /v1/engines/styles``, the
  worker's engine, ``manage.py download_models``) the missing ones are fetched into the styles
  folder, or ``manage.py import_styles`` copies them from a Fooocus install.
- Any other ``*.json`` file in the folder is the user's own and loads first (sorted by name,
  case-blind), as in Fooocus; Fooocus's files load after it in Fooocus's order, so on a name
  clash Fooocus's text wins while the name keeps its first place in the list.
- Our starter set (:data:`STARTER_STYLE_FILES`: 26 styles, 22 of them Fooocus names with texts of
  our own) stands in while Fooocus's library is incomplete: it overrides same-named user styles,
  is overridden by whichever Fooocus files are present, and adds its other names at the end.
  Once all six Fooocus files are there it steps aside, so the list is exactly Fooocus's.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.types import EngineInputError

if TYPE_CHECKING:
    from engine.config import EngineConfig

FOOOCUS_V2 = "Fooocus V2"
RANDOM_STYLE = "Random Style"
FOOOCUS_STYLE_FILES: tuple[str, ...] = (
    "sdxl_styles_fooocus.json",
    "sdxl_styles_sai.json",
    "sdxl_styles_mre.json",
    "sdxl_styles_twri.json",
    "sdxl_styles_diva.json",
    "sdxl_styles_marc_k3nt3l.json",
)
"""Fooocus's style files, in the order Fooocus loads them (last, after any user file)."""
STARTER_STYLE_FILES: tuple[str, ...] = ("fooocus.json", "common.json")
"""Our own starter set, shipped in ``styles/`` for the demo and the tests."""
SHIPPED_STYLE_FILES = STARTER_STYLE_FILES
STYLE_DOWNLOAD_PREFIX = "styles/"
RETRY_FAILED_DOWNLOAD_S = 300.0
"""A style download that failed is not tried again by the same process for this long."""
IMPORT_HINT = "copy them from a Fooocus install with `python manage.py import_styles <folder>`"

log = logging.getLogger("engine.prompts.styles")


@dataclass(frozen=True)
class Style:
    """One style: a positive template (may hold ``{prompt}``) and a negative text."""

    name: str
    prompt: str = ""
    negative_prompt: str = ""


@dataclass(frozen=True)
class StyleSource:
    """A style file the presets know how to fetch."""

    filename: str
    url: str
    sha256: str | None = None


def normalize_style_name(name: str) -> str:
    """Fooocus's style-name normalisation: '-' → ' ', words capitalised, a few acronyms fixed."""
    words = name.replace("-", " ").split(" ")
    text = " ".join(w[:1].upper() + w[1:].lower() for w in words)
    for old, new in (("3d", "3D"), ("Sai", "SAI"), ("Mre", "MRE"), ("(s", "(S")):
        text = text.replace(old, new)
    return text


def read_style_file(path: Path) -> list[Style]:
    """The styles of one file, names normalised; ValueError naming the file when it is not one."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"style file {path} is not valid JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise ValueError(f"style file {path} must hold a JSON list")
    styles: list[Style] = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"style file {path} has an entry without a name: {entry!r}")
        styles.append(
            Style(
                normalize_style_name(entry["name"]),
                str(entry.get("prompt", "")),
                str(entry.get("negative_prompt", "")),
            )
        )
    return styles


def style_files(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(user files, Fooocus's files present, starter files in use) of ``folder``, each in order."""
    present = {p.name: p for p in folder.glob("*.json") if p.is_file()} if folder.is_dir() else {}
    special = set(FOOOCUS_STYLE_FILES) | set(STARTER_STYLE_FILES)
    names = sorted(present, key=lambda n: (n.casefold(), n))
    user = [present[n] for n in names if n not in special]
    fooocus = [present[n] for n in FOOOCUS_STYLE_FILES if n in present]
    complete = len(fooocus) == len(FOOOCUS_STYLE_FILES)
    starter = [] if complete else [present[n] for n in STARTER_STYLE_FILES if n in present]
    return user, fooocus, starter


def load_styles(folder: Path) -> dict[str, Style]:
    """Every style of ``folder``, in list order, each with the text of the file that wins.

    List order is the first appearance in user files, Fooocus's files, the starter set; the text
    is the last definition in user files, the starter set, Fooocus's files (module docstring).
    """
    user, fooocus, starter = style_files(folder)
    parsed = {path: read_style_file(path) for path in [*user, *fooocus, *starter]}
    styles: dict[str, Style] = {}
    for path in [*user, *fooocus, *starter]:
        for style in parsed[path]:
            styles.setdefault(style.name, style)
    for path in [*user, *starter, *fooocus]:
        for style in parsed[path]:
            styles[style.name] = style  # a dict keeps the first position of a key
    return styles


def style_sources(downloads: Mapping[str, str], checksums: Mapping[str, str]) -> list[StyleSource]:
    """The style files among a config's downloads (keys ``styles/<file>``)."""
    return [
        StyleSource(key[len(STYLE_DOWNLOAD_PREFIX) :], url, checksums.get(key))
        for key, url in downloads.items()
        if key.startswith(STYLE_DOWNLOAD_PREFIX)
    ]


# (folder, file) -> (monotonic time, reason) of the last failed download in this process.
_failures: dict[tuple[str, str], tuple[float, str]] = {}
_failures_lock = threading.Lock()


class StyleLibrary:
    """The loaded styles and the rules for applying a selection of them.

    Built on a folder, it re-reads the files whenever they change on disk (another process may
    have fetched or imported Fooocus's library) and fetches the missing ``sources`` first when
    downloads are allowed.
    """

    def __init__(
        self,
        styles: dict[str, Style] | None = None,
        *,
        folder: Path | None = None,
        sources: Sequence[StyleSource] = (),
        allow_downloads: bool = False,
    ) -> None:
        self.folder = folder
        self.sources = list(sources)
        self.allow_downloads = allow_downloads
        self._styles: dict[str, Style] = styles or {}
        self._signature: tuple[Any, ...] | None = None
        self.install_error: str | None = None

    @classmethod
    def from_folder(cls, folder: Path) -> StyleLibrary:
        """Every style file in ``folder`` (an absent folder gives no styles); no downloads."""
        return cls(folder=folder)

    @classmethod
    def from_config(cls, config: EngineConfig) -> StyleLibrary:
        """The library of an :class:`~engine.config.EngineConfig`: its styles folder, and the
        style files its presets name (fetched on first use when downloads are allowed)."""
        return cls(
            folder=config.styles_dir,
            sources=style_sources(config.downloads, config.checksums),
            allow_downloads=config.allow_downloads,
        )

    @property
    def styles(self) -> dict[str, Style]:
        """Name -> style, in Fooocus's list order (re-read when the folder's files change)."""
        if self.folder is not None:
            signature = self._folder_signature(self.folder)
            if signature != self._signature:
                self._styles = load_styles(self.folder)
                self._signature = signature
        return self._styles

    @staticmethod
    def _folder_signature(folder: Path) -> tuple[Any, ...]:
        if not folder.is_dir():
            return ()
        entries = []
        for path in sorted(folder.glob("*.json")):
            try:
                stat = path.stat()
            except OSError:
                continue
            entries.append((path.name, stat.st_mtime_ns, stat.st_size))
        return tuple(entries)

    def missing_sources(self) -> list[StyleSource]:
        """The presets' style files not in the folder yet."""
        if self.folder is None:
            return []
        return [s for s in self.sources if not (self.folder / s.filename).is_file()]

    def install(self, on_message: Callable[[str], None] | None = None) -> list[str]:
        """Fetch the missing style files (verified, one process at a time); the files fetched.

        Does nothing when downloads are off. A failure is remembered for
        :data:`RETRY_FAILED_DOWNLOAD_S` (this process does not try that file again meanwhile) and
        kept in :attr:`install_error`; it never raises.
        """
        if not self.allow_downloads or self.folder is None:
            return []
        from engine.models.downloads import DownloadError, download_file

        fetched: list[str] = []
        errors: list[str] = []
        for source in self.missing_sources():
            key = (str(self.folder), source.filename)
            with _failures_lock:
                failed = _failures.get(key)
            if failed and time.monotonic() - failed[0] < RETRY_FAILED_DOWNLOAD_S:
                errors.append(failed[1])
                continue
            try:
                download_file(
                    source.url,
                    self.folder / source.filename,
                    on_message,
                    sha256=source.sha256,
                    attempts=2,
                )
            except DownloadError as exc:
                log.warning("Style file not installed: %s", exc)
                with _failures_lock:
                    _failures[key] = (time.monotonic(), str(exc))
                errors.append(str(exc))
            else:
                fetched.append(source.filename)
        self.install_error = "; ".join(errors) or None
        return fetched

    def ensure_installed(self) -> None:
        """Fetch the presets' missing style files when downloads are allowed (the first use)."""
        if self.allow_downloads and self.missing_sources():
            self.install()

    def names(self) -> list[str]:
        """Selectable names in Fooocus's order: the two pseudo-styles, then the file styles."""
        self.ensure_installed()
        return [FOOOCUS_V2, RANDOM_STYLE, *self.styles]

    def check(self, selections: Sequence[str]) -> None:
        """Raise the typed error for a selection this engine cannot apply.

        A name that is not installed yet fetches the presets' missing style files first.
        """
        unknown = self._unknown(selections)
        if unknown and self.missing_sources():
            self.ensure_installed()
            unknown = self._unknown(selections)
        if RANDOM_STYLE in selections and not self.styles:
            raise EngineInputError("style_selections", "'Random Style' needs styles")
        if unknown:
            names = ", ".join(f"'{name}'" for name in unknown)
            message = f"unknown style{'s' if len(unknown) > 1 else ''} {names}"
            missing = self.missing_sources()
            if missing and self.install_error:
                message += (
                    f" (Fooocus's style library could not be fetched: {self.install_error}; "
                    f"{IMPORT_HINT})"
                )
            elif missing:
                message += (
                    " (Fooocus's style library is not installed and downloads are off; "
                    f"{IMPORT_HINT})"
                )
            raise EngineInputError("style_selections", message)

    def _unknown(self, selections: Sequence[str]) -> list[str]:
        styles = self.styles
        return [
            name
            for name in dict.fromkeys(selections)
            if name not in (FOOOCUS_V2, RANDOM_STYLE) and name not in styles
        ]

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
        after the style negatives. ``Random Style`` draws from ``rng`` (seeded per image) over
        every style in list order, as Fooocus does.
        """
        self.check(selections)
        styles = self.styles
        positive: list[str] = []
        negative: list[str] = []
        applied: list[str] = []
        placeholder_used = False
        for name in selections:
            if name == FOOOCUS_V2:
                continue
            if name == RANDOM_STYLE:
                name = rng.choice(list(styles))
            style = styles[name]
            applied.append(name)
            placeholder_used = placeholder_used or "{prompt}" in style.prompt
            positive += style.prompt.replace("{prompt}", prompt).splitlines()
            negative += style.negative_prompt.splitlines()
        if not placeholder_used:
            positive.insert(0, prompt)
        negative.append(negative_prompt)
        return positive, negative, applied

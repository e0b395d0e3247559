"""``python manage.py import_styles <folder>``: copy Fooocus's style library from a Fooocus install.

For machines without internet. ``<folder>`` is a Fooocus install (its ``sdxl_styles/`` is used)
or a folder of style files itself. Every ``*.json`` file in Fooocus's style format is copied into
the styles folder (Fooocus's six and any user style files kept beside them); a file that is not
a style list stops the import before anything is copied. Fooocus's six files are compared with
the SHA-256 of Fooocus 2.5.5's that the presets give: another version is imported all the same,
with a note.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from engine.models.downloads import copy_file_atomically, sha256_of
from engine.presets import STYLE_DOWNLOAD_FOLDER, all_checksums
from engine.prompts.styles import FOOOCUS_STYLE_FILES, STARTER_STYLE_FILES, read_style_file


class Command(BaseCommand):
    help = "Copy Fooocus's style files (sdxl_styles/*.json) from a Fooocus install."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder", help="a Fooocus install, or its sdxl_styles folder")

    def handle(self, *args: Any, **options: Any) -> None:
        source = Path(options["folder"]).expanduser()
        if (source / "sdxl_styles").is_dir():
            source = source / "sdxl_styles"
        if not source.is_dir():
            raise CommandError(f"{source} is not a folder")
        files = sorted(p for p in source.glob("*.json") if p.is_file())
        # Never overwrite our starter set with a same-named file from elsewhere.
        files = [p for p in files if p.name not in STARTER_STYLE_FILES]
        if not files:
            raise CommandError(f"no style files (*.json) in {source}")
        counts: dict[Path, int] = {}
        for path in files:
            try:
                counts[path] = len(read_style_file(path))
            except ValueError as exc:
                raise CommandError(f"{exc}; nothing was imported") from exc

        target_dir = Path(settings.FOOOCUS_STYLES_DIR)
        checksums = all_checksums(Path(settings.FOOOCUS_PRESETS_DIR))
        for path in files:
            copy_file_atomically(path, target_dir / path.name)
            note = ""
            expected = checksums.get(f"{STYLE_DOWNLOAD_FOLDER}/{path.name}")
            if expected and sha256_of(path) != expected:
                note = " (differs from Fooocus 2.5.5's file: another Fooocus version?)"
            self.stdout.write(f"{path.name}: {counts[path]} styles{note}")
        missing = [name for name in FOOOCUS_STYLE_FILES if not (target_dir / name).is_file()]
        self.stdout.write(
            f"Imported {len(files)} files ({sum(counts.values())} styles) into {target_dir}."
        )
        if missing:
            self.stdout.write(f"Fooocus's library is incomplete: {', '.join(missing)} missing.")

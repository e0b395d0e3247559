"""``python manage.py download_models [--preset NAME] [--all]``: fetch a preset's files up front.

Every file the preset's download tables name (checkpoints, LoRAs, VAEs, embeddings), the shared
helper models any preset lists (prompt expansion, safety checker, upscaler, inpaint, ControlNets,
CLIP vision) and Fooocus's style library: the files a request on that preset may need, so that
the first request does not wait for them. Each file shows a progress bar; present files are
skipped; downloads resume, are verified against the preset's SHA-256 and take the same file lock
as the worker's (a file the worker is already fetching is waited for). No torch is imported.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from engine.presets import STYLE_DOWNLOAD_FOLDER, all_checksums, list_presets, load_preset
from engine.types import EngineInputError

# The download tables of a preset's own model choice; every other table holds shared helpers.
OWN_FOLDERS = ("checkpoints", "loras", "vae", "embeddings")


def files_for(presets_dir: Path, names: list[str]) -> dict[str, str]:
    """``"<folder>/<file>"`` -> URL of what ``names`` need: their own files plus the shared ones."""
    wanted: dict[str, str] = {}
    for name in list_presets(presets_dir):
        downloads = load_preset(presets_dir, name).downloads
        own = name in names
        for key, url in downloads.items():
            if own or key.split("/", 1)[0] not in OWN_FOLDERS:
                wanted.setdefault(key, url)
    return wanted


class Command(BaseCommand):
    help = "Download every model and style file a preset needs (resumable, SHA-256 verified)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--preset", help="preset to prepare (default: FOOOCUS_PRESET, now the server's)"
        )
        parser.add_argument("--all", action="store_true", help="every preset's files")

    def handle(self, *args: Any, **options: Any) -> None:
        # The bars show the progress; the downloader's log lines would only repeat it.
        logger = logging.getLogger("engine.models.downloads")
        level = logger.level
        logger.setLevel(logging.WARNING)
        try:
            self._download(options)
        finally:
            logger.setLevel(level)

    def _download(self, options: dict[str, Any]) -> None:
        from tqdm import tqdm

        from engine.models.downloads import DownloadError, download_file

        presets_dir = Path(settings.FOOOCUS_PRESETS_DIR)
        available = list_presets(presets_dir)
        if options["all"]:
            names = available
        else:
            name = options["preset"] or settings.FOOOCUS_PRESET
            try:
                load_preset(presets_dir, name)
            except EngineInputError as exc:
                raise CommandError(str(exc)) from exc
            names = [name]
        wanted = files_for(presets_dir, names)
        checksums = all_checksums(presets_dir)
        models_dir = Path(settings.FOOOCUS_MODELS_DIR)
        styles_dir = Path(settings.FOOOCUS_STYLES_DIR)

        failed: list[str] = []
        fetched = present = 0
        for key, url in sorted(wanted.items()):
            folder, filename = key.rsplit("/", 1)
            root = styles_dir if folder == STYLE_DOWNLOAD_FOLDER else models_dir / folder
            target = root / filename
            if target.exists():
                present += 1
                continue
            with tqdm(
                desc=filename, unit="B", unit_scale=True, unit_divisor=1024, file=self.stderr
            ) as bar:

                def progress(done: int, total: int | None, bar: Any = bar) -> None:
                    if total and bar.total != total:
                        bar.total = total
                    bar.n = done
                    bar.refresh()

                def message(text: str, bar: Any = bar) -> None:
                    if text.startswith(
                        ("Waiting", "Connection lost", "Could not connect", "Resuming")
                    ) or ("another process" in text):
                        bar.write(text, file=self.stderr)

                try:
                    download_file(
                        url,
                        target,
                        message,
                        sha256=checksums.get(key),
                        on_progress=progress,
                    )
                except DownloadError as exc:
                    bar.write(f"FAILED {key}: {exc}", file=self.stderr)
                    failed.append(f"{key}: {exc}")
                    continue
            fetched += 1
            verified = "verified" if checksums.get(key) else "size-checked only (no SHA-256)"
            self.stdout.write(f"{key}: downloaded, {verified}")
        self.stdout.write(
            f"{', '.join(names)}: {fetched} downloaded, {present} already present, "
            f"{len(failed)} failed"
        )
        if failed:
            raise CommandError("some files could not be downloaded:\n" + "\n".join(failed))

"""``python manage.py create_demo_model``: write the tiny demo model set (no downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Write tiny random models with the real architectures and file formats to models/."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--only-if-missing",
            action="store_true",
            help="do nothing when the demo checkpoint already exists",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from engine.demo.writer import DEMO_CHECKPOINT, create_demo_models

        models_dir = Path(settings.FOOOCUS_MODELS_DIR)
        if options["only_if_missing"] and (models_dir / "checkpoints" / DEMO_CHECKPOINT).exists():
            return
        written = create_demo_models(models_dir)
        for path in written:
            self.stdout.write(f"wrote {path}")

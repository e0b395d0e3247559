"""What the per-request run needs from the model manager, as a leaf module (no engine imports
beyond the option names), so that the run, inpaint and metadata code can name it without an
import circle through :mod:`engine.pipeline`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from engine.options import DEFAULT_VAE

if TYPE_CHECKING:
    from engine.models.components import SDXLComponents

Message = Callable[[str], None]


class ModelSource(Protocol):
    """The model manager's face (:class:`engine.models.manager.ModelManager`)."""

    def require(self, folder: str, filename: str, on_message: Message | None = None) -> Path: ...

    def list_files(self, folder: str) -> list[str]: ...

    def load_base(
        self,
        name: str,
        *,
        vae_name: str = DEFAULT_VAE,
        loras: Sequence[tuple[str, float]] = (),
        on_message: Message | None = None,
    ) -> SDXLComponents: ...

    def load_refiner(
        self,
        name: str,
        *,
        loras: Sequence[tuple[str, float]] = (),
        on_message: Message | None = None,
    ) -> SDXLComponents: ...

"""Textual-inversion embeddings: ``embedding:NAME`` in a prompt (reference §5.6, §11).

An SDXL embedding file holds one vector set per text encoder: ``clip_l`` [n, 768] and
``clip_g`` [n, 1280] (``.safetensors``, or a pickled ``.pt`` / ``.bin`` dict read with
``weights_only``). The n vectors take the place of n tokens in the prompt, so they count toward
the 75-token chunks, and they are fed to each encoder in place of its token embeddings at those
positions. Files live in ``models/embeddings`` and are named by their stem (or full file name).

Other textual-inversion files are read as Fooocus reads them (``sd1_clip.load_embed``): each
encoder takes its own key when the file has it, else an A1111 file's ``string_to_param`` vectors,
else the file's first tensor. So an SD1.5 embedding (one [n, 768] set, e.g. ``emb_params``) in an
SDXL prompt reaches both encoders; CLIP-L (768 wide) uses it and CLIP-G (1280 wide) skips it with a
warning (:class:`~engine.prompts.encoding.PromptEncoder` drops vectors of the wrong width).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine.types import EngineInputError

EMBEDDINGS_FOLDER = "embeddings"
EMBEDDING_PREFIX = "embedding:"
SUFFIXES = (".safetensors", ".pt", ".bin")
ENCODER_KEYS = ("clip_l", "clip_g")


@dataclass(frozen=True)
class Embedding:
    """One embedding's vectors per encoder key (``clip_l``, ``clip_g``), each [n, width]."""

    name: str
    vectors: Mapping[str, torch.Tensor]

    @property
    def length(self) -> int:
        """How many token positions the embedding takes."""
        return int(next(iter(self.vectors.values())).shape[0])


def read_embedding(path: Path) -> Embedding:
    """Read a textual-inversion file (SDXL or SD1.5); ValueError when it holds no vectors."""
    if path.suffix == ".safetensors":
        data: object = load_file(str(path))
    else:
        data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path.name} holds no tensors by name")
    vectors: dict[str, torch.Tensor] = {}
    for key in ENCODER_KEYS:
        tensor = _vectors_for(data, key)
        if tensor is None:
            raise ValueError(f"{path.name} holds no embedding vectors")
        vectors[key] = (tensor.unsqueeze(0) if tensor.ndim == 1 else tensor).float()
    lengths = {t.shape[0] for t in vectors.values()}
    if len(lengths) != 1 or any(t.ndim != 2 for t in vectors.values()):
        raise ValueError(f"{path.name}: clip_l and clip_g must be [n, width] with the same n")
    return Embedding(path.stem, vectors)


def _vectors_for(data: Mapping[str, object], key: str) -> torch.Tensor | None:
    """Fooocus's choice of one encoder's vectors: its key, string_to_param, the first tensor."""
    own = data.get(key)
    if isinstance(own, torch.Tensor):
        return own
    params = data.get("string_to_param")
    if isinstance(params, Mapping):
        first = next(iter(params.values()), None)
        return first if isinstance(first, torch.Tensor) else None
    return next((v for v in data.values() if isinstance(v, torch.Tensor)), None)


class EmbeddingLibrary:
    """The embedding files of a models folder, read on first use and kept."""

    def __init__(self, files: list[str], path_of: Callable[[str], Path], field: str) -> None:
        self._by_name: dict[str, str] = {}
        for name in files:
            if Path(name).suffix.lower() in SUFFIXES:
                self._by_name.setdefault(Path(name).stem, name)
                self._by_name.setdefault(name, name)
        self._path_of = path_of
        self._loaded: dict[str, Embedding] = {}
        self.field = field

    def find(self, name: str) -> Embedding | None:
        """The embedding called ``name`` (file stem or name), None when there is no such file.

        Raises EngineInputError on ``field`` when the file exists but is not an SDXL embedding.
        """
        file = self._by_name.get(name)
        if file is None:
            return None
        if file not in self._loaded:
            try:
                self._loaded[file] = read_embedding(self._path_of(file))
            except (ValueError, RuntimeError, OSError) as exc:
                raise EngineInputError(self.field, f"cannot read embedding {file}: {exc}") from exc
        return self._loaded[file]

"""The tool models of one engine: found (or downloaded) through the model manager, loaded on
first use and kept, like the other auxiliary models, until the engine goes."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.models.source import Message, ModelSource
from engine.tools.checks import check_describe, check_mask
from engine.tools.describe import Captioner, Tagger
from engine.tools.files import (
    BLIP_FILES,
    BLIP_FOLDER,
    DESCRIBE_FOLDER,
    DINO_FILES,
    DINO_FOLDER,
    REMBG_FOLDER,
    SAM_FILES,
    SAM_FOLDERS,
    TAGGER_FILE,
    TAGGER_TAGS_FILE,
    rembg_file,
)
from engine.tools.sam import Detector, SamSegmenter, text_prompted_mask
from engine.tools.segment import Segmenter
from engine.tools.types import (
    DescribeRequest,
    MaskRequest,
    MaskResult,
)


class ToolModels:
    """Loads and holds the describe and mask models of one engine."""

    def __init__(self, manager: ModelSource, device: torch.device, dtype: torch.dtype) -> None:
        self.manager = manager
        self.device = device
        self.dtype = dtype
        self._captioner: Captioner | None = None
        self._tagger: Tagger | None = None
        self._segmenters: dict[str, Segmenter] = {}
        self._detector: Detector | None = None
        self._sam: dict[str, SamSegmenter] = {}

    def _folder(self, folder: str, files: tuple[str, ...], on_message: Message | None) -> Path:
        paths = [self.manager.require(folder, name, on_message) for name in files]
        return paths[0].parent

    def captioner(self, on_message: Message | None = None) -> Captioner:
        """BLIP, loaded once."""
        if self._captioner is None:
            folder = self._folder(BLIP_FOLDER, BLIP_FILES, on_message)
            self._captioner = Captioner(folder, self.device, self.dtype)
        return self._captioner

    def tagger(self, on_message: Message | None = None) -> Tagger:
        """The WD14 tagger and its tag list, loaded once."""
        if self._tagger is None:
            model = self.manager.require(DESCRIBE_FOLDER, TAGGER_FILE, on_message)
            tags = self.manager.require(DESCRIBE_FOLDER, TAGGER_TAGS_FILE, on_message)
            self._tagger = Tagger(model, tags)
        return self._tagger

    def segmenter(self, model: str, on_message: Message | None = None) -> Segmenter:
        """A background-removal model, loaded once."""
        if model not in self._segmenters:
            path = self.manager.require(REMBG_FOLDER, rembg_file(model), on_message)
            self._segmenters[model] = Segmenter(model, path)
        return self._segmenters[model]

    def detector(self, on_message: Message | None = None) -> Detector:
        """GroundingDINO, loaded once."""
        if self._detector is None:
            folder = self._folder(DINO_FOLDER, DINO_FILES, on_message)
            self._detector = Detector.load(folder, self.device)
        return self._detector

    def sam(self, size: str, on_message: Message | None = None) -> SamSegmenter:
        """SAM of one size (vit_b, vit_l, vit_h), loaded once."""
        if size not in self._sam:
            folder = self._folder(SAM_FOLDERS[size], SAM_FILES, on_message)
            self._sam[size] = SamSegmenter.load(folder, self.device, self.dtype)
        return self._sam[size]

    def describe(self, request: DescribeRequest, on_message: Message | None = None) -> str:
        """The prompt text for ``request.image``."""
        check_describe(request)
        if request.image_type == "Photo":
            return self.captioner(on_message).caption(request.image)
        return self.tagger(on_message).describe(request.image)

    def mask(self, request: MaskRequest, on_message: Message | None = None) -> MaskResult:
        """The mask of ``request.image`` by ``request.mask_model``."""
        check_mask(request)
        if request.mask_model != "sam":
            segmenter = self.segmenter(request.mask_model, on_message)
            return MaskResult(segmenter.mask(request.image, request.cloth_category))
        detector = self.detector(on_message)
        sam = None if request.dino_debug else self.sam(request.sam_model, on_message)
        return text_prompted_mask(request, detector, sam)

"""The Fooocus engine as a plain library: ``Engine(config).generate(request, ...)``.

The request/result types import cheaply; :class:`Engine` (which pulls in torch, diffusers and
transformers) loads on first access, so code that only builds requests stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.config import EngineConfig
from engine.types import (
    EngineError,
    EngineEvent,
    EngineInputError,
    EngineRequest,
    EngineResult,
    EventCallback,
    FeatureNotSupportedError,
    GeneratedImage,
    ImagePromptSpec,
    LoraSpec,
    ModelFileMissingError,
    StopAction,
    StopPoll,
    TaskStopped,
)

if TYPE_CHECKING:
    from engine.metadata import encode_image
    from engine.metadata import encode_image as encode_image_file
    from engine.pipeline import Engine

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineError",
    "EngineEvent",
    "EngineInputError",
    "EngineRequest",
    "EngineResult",
    "EventCallback",
    "FeatureNotSupportedError",
    "GeneratedImage",
    "ImagePromptSpec",
    "LoraSpec",
    "ModelFileMissingError",
    "StopAction",
    "StopPoll",
    "TaskStopped",
    "encode_image",
    "encode_image_file",
]


def __getattr__(name: str) -> Any:
    # Deferred so that importing the request types does not load torch and diffusers.
    if name == "Engine":
        from engine.pipeline import Engine

        return Engine
    if name in ("encode_image", "encode_image_file"):
        # encode_image_file: the one encoder of output files (the name it gets in engine.output).
        from engine.metadata import encode_image

        return encode_image
    raise AttributeError(f"module 'engine' has no attribute {name!r}")

"""The worker side of the tool tasks: the engine call and its recorded answer."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from engine.tools.types import DescribeRequest, MaskRequest
from generation.params import _load_input
from history import services
from history.models import TaskKind

if TYPE_CHECKING:
    from generation.worker import EngineWorker, _TaskRun

MASK_FIELDS = (
    "mask_model",
    "cloth_category",
    "dino_prompt_text",
    "sam_model",
    "box_threshold",
    "text_threshold",
    "sam_max_detections",
    "dino_erode_or_dilate",
    "dino_debug",
)


def run_tool_task(worker: EngineWorker, run: _TaskRun) -> bool:
    """Run a describe or mask task; True when it was stopped before it ran.

    The models are called once each, without sampling steps, so a stop or cancel is honoured
    before the call (a running call is short and finishes).
    """
    from generation.worker import _record_image, _write_output

    task = run.task
    params: dict[str, Any] = task.req_params
    if worker._should_stop(run):
        return True
    image = _load_input(params["image"])
    assert image is not None

    def report(message: str) -> None:
        run.publish(10, message)

    if task.kind == TaskKind.DESCRIBE:
        run.publish(5, f"Describing the image ({params['image_type']}) ...")
        text = worker.engine.describe(DescribeRequest(image, params["image_type"]), report)
        services.task_set_text(task=task, text=text, worker=worker.name)
        return False
    run.publish(5, f"Generating the mask ({params['mask_model']}) ...")
    request = MaskRequest(image, **{key: params[key] for key in MASK_FIELDS})
    result = worker.engine.generate_mask(request, report)
    # Fooocus answers SAM's mask as RGB and the background removers' as one channel.
    mask = result.mask.convert("RGB") if request.mask_model == "sam" else result.mask
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    relative = _write_output(buffer.getvalue(), {"output_format": "png"}, 0)
    _record_image(run, relative, 0, worker.name)
    return False

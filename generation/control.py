"""Queue control shared by the API and the admin: cancel a task and tell whoever listens."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from generation.events import control_request, stream_event, task_group
from generation.webhooks import send_webhook_event
from history import services
from history.models import TaskStatus


def task_cancel_and_notify(*, task_id: str) -> services.CancelOutcome | None:
    """Cancel through the service, then notify: a waiting task's streams end now (and its
    ``canceled`` webhook goes out); a running task's worker is asked to stop at its next step."""
    outcome = services.task_cancel(task_id=task_id)
    if outcome is None:
        return None
    if outcome.action == "canceled":
        layer = get_channel_layer()
        if layer is not None:
            event = stream_event(
                task_id=task_id, status=TaskStatus.CANCELED, progress=0, message="Canceled"
            )
            async_to_sync(layer.group_send)(
                task_group(task_id), {"type": "task.event", "event": event}
            )
        send_webhook_event(outcome.task, "canceled")
    elif outcome.action == "stopping":
        control_request(task_id, "stop")
    return outcome

"""Queue control shared by the API and the admin: cancel a task and tell whoever listens."""

from __future__ import annotations

from generation.announce import task_ended
from generation.events import control_request
from history import services


def task_cancel_and_notify(*, task_id: str) -> services.CancelOutcome | None:
    """Cancel through the service, then notify: a waiting task's streams end now (and its
    ``canceled`` webhook goes out); a running task's worker is asked to stop at its next step."""
    outcome = services.task_cancel(task_id=task_id)
    if outcome is None:
        return None
    if outcome.action == "canceled":
        task_ended(outcome.task)
    elif outcome.action == "stopping":
        control_request(task_id, "stop")
    return outcome

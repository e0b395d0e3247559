"""Admin pages that need the engine's live state: the live queue and cancel.

They live here, not in ``history``, because progress, previews and stop requests belong to
``generation.events``; the history admin links to them by URL name (``task-queue:*``).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from generation.control import task_cancel_and_notify
from generation.events import live_get
from generation.presenters import epoch_mills
from history import selectors
from history.models import Task

PENDING_SHOWN = 50


def _queue_entry(task: Task, *, live: bool) -> dict[str, Any]:
    state = live_get(task.task_id) if live else None
    progress = task.progress
    if state is not None:
        progress = max(progress, int(state.get("progress") or 0))
    params = task.req_params
    return {
        "id": task.pk,
        "task_id": task.task_id,
        "status": task.status,
        "prompt": params.get("prompt") or "",
        "performance": params.get("performance_selection") or "",
        "aspect_ratio": params.get("aspect_ratios_selection") or "",
        "image_number": params.get("image_number") or 1,
        "in_queue_mills": epoch_mills(task.created_at),
        "start_mills": epoch_mills(task.started_at),
        "progress": progress,
        "message": (state or {}).get("message") or ("Waiting in queue" if not live else ""),
        "preview": (state or {}).get("preview"),
        "admin_url": reverse("admin:history_task_change", args=[task.pk]),
        "cancel_url": reverse("task-queue:cancel", args=[task.task_id]),
    }


def queue_snapshot() -> dict[str, Any]:
    """Running tasks with their live progress and preview, and the head of the waiting line."""
    return {
        "running": [_queue_entry(task, live=True) for task in selectors.task_list_running()],
        "pending": [
            _queue_entry(task, live=False)
            for task in selectors.task_list_pending(page=0, page_size=PENDING_SHOWN)
        ],
        "pending_total": selectors.queue_depth(),
    }


def _require(request: HttpRequest, permission: str) -> None:
    if not request.user.has_perm(f"history.{permission}_task"):
        raise PermissionDenied


def queue_page(request: HttpRequest) -> HttpResponse:
    """The live queue: the page renders the current state, then refreshes it about every second."""
    _require(request, "view")
    context = {
        **admin.site.each_context(request),
        "title": "Live queue",
        "opts": Task._meta,
        "snapshot": queue_snapshot(),
        "state_url": reverse("task-queue:state"),
    }
    return TemplateResponse(request, "admin/task_queue/queue.html", context)


def queue_state(request: HttpRequest) -> JsonResponse:
    """The queue page's polling endpoint (JSON)."""
    _require(request, "view")
    return JsonResponse(queue_snapshot())


@require_POST
def task_cancel_view(request: HttpRequest, task_id: str) -> HttpResponse:
    """Cancel from the admin: JSON for the live page's fetch(), a redirect for plain forms."""
    _require(request, "change")
    outcome = task_cancel_and_notify(task_id=task_id)
    if outcome is None:
        raise Http404(f"no task {task_id}")
    text = {
        "canceled": f"Task {task_id} was canceled before it ran.",
        "stopping": f"Task {task_id} is stopping at its next step.",
        "ended": f"Task {task_id} had already ended.",
    }[outcome.action]
    if request.headers.get("X-Requested-With") == "fetch":
        return JsonResponse({"action": outcome.action, "message": text})
    messages.add_message(
        request, messages.WARNING if outcome.action == "ended" else messages.SUCCESS, text
    )
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = reverse("task-queue:page")
    return HttpResponseRedirect(target)

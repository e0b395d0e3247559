"""Webhook delivery: off the engine's thread, with a timeout, retries with back-off, and a record
of every attempt on the task."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from django.conf import settings
from django.db import close_old_connections

from generation.presenters import task_object
from history.models import Task
from history.services import webhook_delivery_record

logger = logging.getLogger(__name__)


class WebhookSender:
    """Delivers each ended task's object to its webhook URL in a small thread pool."""

    def __init__(self, max_workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="webhook")
        self._closing = threading.Event()

    def send(self, task: Task) -> None:
        url = task.webhook_url or settings.FOOOCUS_WEBHOOK_URL
        if url:
            self._pool.submit(self._deliver, task.pk, url)

    def _deliver(self, task_pk: int, url: str) -> None:
        close_old_connections()
        try:
            task = Task.objects.get(pk=task_pk)
            body = task_object(task, base=task.base_url, with_live=False)
            retries = max(1, settings.FOOOCUS_WEBHOOK_RETRIES)
            for attempt in range(1, retries + 1):
                status_code, error = self._post(url, body)
                ok = status_code is not None and 200 <= status_code < 300
                webhook_delivery_record(
                    task=task, url=url, attempt=attempt, status_code=status_code, ok=ok, error=error
                )
                if ok:
                    return
                logger.warning("webhook %s for %s failed: %s", url, task.task_id, error)
                if attempt < retries and not self._closing.wait(
                    settings.FOOOCUS_WEBHOOK_BACKOFF * 2 ** (attempt - 1)
                ):
                    continue
                return
        except Exception:
            logger.exception("webhook delivery for task %s crashed", task_pk)
        finally:
            close_old_connections()

    @staticmethod
    def _post(url: str, body: dict[str, object]) -> tuple[int | None, str]:
        try:
            response = requests.post(
                url,
                json=body,
                timeout=settings.FOOOCUS_WEBHOOK_TIMEOUT,
                headers={"User-Agent": "fooocus-api-server"},
            )
        except requests.RequestException as exc:
            return None, f"{exc.__class__.__name__}: {exc}"
        error = "" if response.ok else f"HTTP {response.status_code}"
        return response.status_code, error

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop retrying and wait briefly for deliveries in flight."""
        self._closing.set()
        deadline = time.monotonic() + timeout
        self._pool.shutdown(wait=False, cancel_futures=True)
        for thread in list(getattr(self._pool, "_threads", ())):
            thread.join(max(0.0, deadline - time.monotonic()))

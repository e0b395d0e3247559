"""Webhook delivery: off the engine's thread, with a timeout, retries with back-off, a record of
every attempt on the task, and an HMAC signature when a secret is configured.

Signing follows the Standard Webhooks scheme: headers ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``. The secret is
``FOOOCUS_WEBHOOK_SECRET``; a ``whsec_`` prefix marks a base64 secret (as Standard Webhooks
libraries write them), any other value is used as raw bytes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait

import requests
from django.conf import settings
from django.db import close_old_connections

from generation.compat import presenters as compat
from generation.images import ImageInputError, check_webhook_target
from generation.presenters import task_object
from history.models import Task
from history.services import webhook_delivery_record

logger = logging.getLogger(__name__)

ENDING_EVENTS = {"finished": "finished", "failed": "failed", "stop": "stop", "canceled": "canceled"}


def _secret_bytes(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one delivery."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    """Check a delivery as a receiver would (used by the tests; receivers can copy the rule)."""
    try:
        timestamp = int(headers["webhook-timestamp"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = sign(secret, headers.get("webhook-id", ""), timestamp, body)
    offered = headers.get("webhook-signature", "").split()
    return any(hmac.compare_digest(expected, candidate) for candidate in offered)


class WebhookSender:
    """Delivers task events to webhook URLs from a small thread pool."""

    def __init__(self, max_workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="webhook")
        self._closing = threading.Event()
        self._last_progress: dict[int, float] = {}
        # The previous delivery of each task: a task's events arrive in the order they happened.
        self._previous: dict[int, Future[None]] = {}
        self._lock = threading.Lock()

    def send(self, task: Task, event: str) -> None:
        """Queue ``event`` for ``task`` if the task subscribed to it (progress is throttled)."""
        url = task.webhook_url or settings.FOOOCUS_WEBHOOK_URL
        wanted = task.req_params.get("webhook_events") or list(ENDING_EVENTS)
        if not url or event not in wanted:
            return
        if event == "progress":
            now = time.monotonic()
            if (
                now - self._last_progress.get(task.pk, 0.0)
                < settings.FOOOCUS_WEBHOOK_PROGRESS_INTERVAL
            ):
                return
            self._last_progress[task.pk] = now
        elif event in ENDING_EVENTS:
            self._last_progress.pop(task.pk, None)
        with self._lock:
            previous = self._previous.get(task.pk)
            future = self._pool.submit(self._deliver_after, previous, task.pk, url, event)
            self._previous[task.pk] = future
            future.add_done_callback(functools.partial(self._forget, task.pk))

    def _forget(self, task_pk: int, done: Future[None]) -> None:
        with self._lock:
            if self._previous.get(task_pk) is done:
                del self._previous[task_pk]

    def _deliver_after(
        self, previous: Future[None] | None, task_pk: int, url: str, event: str
    ) -> None:
        if previous is not None:
            wait([previous])
        self._deliver(task_pk, url, event)

    def _deliver(self, task_pk: int, url: str, event: str) -> None:
        close_old_connections()
        try:
            task = Task.objects.get(pk=task_pk)
            if compat.is_compat_task(task):
                # A Fooocus-API job gets that API's body: {job_id, job_result: [{url, seed}]}.
                body = compat.webhook_body(task)
            else:
                body = {**task_object(task, base=task.base_url, with_live=True), "event": event}
            data = json.dumps(body).encode()
            message_id = f"msg_{uuid.uuid4().hex}"
            retries = max(1, settings.FOOOCUS_WEBHOOK_RETRIES)
            for attempt in range(1, retries + 1):
                status_code, error = self._post(url, data, message_id, event)
                ok = status_code is not None and 200 <= status_code < 300
                webhook_delivery_record(
                    task=task,
                    url=url,
                    attempt=attempt,
                    status_code=status_code,
                    ok=ok,
                    error=error if not error else f"{event}: {error}",
                )
                if ok:
                    return
                logger.warning("webhook %s (%s) for %s failed: %s", url, event, task.task_id, error)
                if attempt == retries or self._closing.wait(
                    settings.FOOOCUS_WEBHOOK_BACKOFF * 2 ** (attempt - 1)
                ):
                    return
        except Task.DoesNotExist:
            return
        except Exception:
            logger.exception("webhook delivery for task %s crashed", task_pk)
        finally:
            close_old_connections()

    @staticmethod
    def _post(url: str, data: bytes, message_id: str, event: str) -> tuple[int | None, str]:
        try:
            # Checked again at delivery: DNS may point somewhere else than at submission.
            check_webhook_target(url)
        except ImageInputError as exc:
            return None, f"refused target: {exc}"
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "fooocus-api-server",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "X-Fooocus-Event": event,
        }
        if settings.FOOOCUS_WEBHOOK_SECRET:
            headers["webhook-signature"] = sign(
                settings.FOOOCUS_WEBHOOK_SECRET, message_id, timestamp, data
            )
        try:
            response = requests.post(
                url,
                data=data,
                timeout=settings.FOOOCUS_WEBHOOK_TIMEOUT,
                headers=headers,
                allow_redirects=False,
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


@functools.cache
def webhook_sender() -> WebhookSender:
    """This process's sender (web processes send ``queued``/``canceled``, workers the rest)."""
    return WebhookSender()


def send_webhook_event(task: Task, event: str) -> None:
    webhook_sender().send(task, event)

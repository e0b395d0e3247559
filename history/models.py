"""The Task table is both the queue and the history: a pending row *is* a queue entry."""

from __future__ import annotations

from django.db import models


class TaskStatus(models.TextChoices):
    PENDING = "pending", "pending"
    RUNNING = "running", "running"
    FINISHED = "finished", "finished"
    FAILED = "failed", "failed"
    STOP = "stop", "stop"
    CANCELED = "canceled", "canceled"


class TaskKind(models.TextChoices):
    """What a task does: generate images, or one of the image tools."""

    GENERATE = "generate", "generate"
    DESCRIBE = "describe", "describe image"
    MASK = "mask", "generate mask"


ENDED_STATUSES: tuple[str, ...] = (
    TaskStatus.FINISHED,
    TaskStatus.FAILED,
    TaskStatus.STOP,
    TaskStatus.CANCELED,
)


class Task(models.Model):
    """One generation request, from enqueue to its end, kept as history afterwards."""

    task_id = models.CharField(max_length=32, unique=True, editable=False)
    status = models.CharField(
        max_length=16, choices=TaskStatus.choices, default=TaskStatus.PENDING, db_index=False
    )
    req_params = models.JSONField(default=dict)
    webhook_url = models.CharField(max_length=2048, blank=True, default="")
    # Where the client reached us; absolute result URLs for webhooks are built from it.
    base_url = models.CharField(max_length=512, blank=True, default="")
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    progress = models.PositiveSmallIntegerField(default=0)
    # Output files relative to the outputs folder ("YYYY-MM-DD/name.png"), in result order.
    result = models.JSONField(default=list, blank=True)
    seeds = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True, default="")
    worker = models.CharField(max_length=128, blank=True, default="")
    # The API key that created the task (its public prefix; "" when auth is off).
    api_key = models.CharField(max_length=32, blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)
    # Copies of two request fields (``base_model_name``, ``performance_selection``) written with
    # the row, so the admin filters on them through an index instead of reading every JSON.
    model_name = models.CharField(max_length=255, blank=True, default="")
    performance = models.CharField(max_length=64, blank=True, default="")
    kind = models.CharField(max_length=16, choices=TaskKind.choices, default=TaskKind.GENERATE)
    # The answer of a describe-image task (the other kinds answer with files in ``result``).
    text = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The claim query and the pending list: oldest pending first.
            models.Index(fields=["status", "id"], name="task_status_id_idx"),
            # Time-range queries and range delete filter on enqueue time; the status is there so
            # that per-day counts of failures are answered from the index alone.
            models.Index(fields=["created_at", "status"], name="task_created_status_idx"),
            # Pages of lists newest first are chosen by walking one of these (they hold every
            # column the lists filter on), then only the page's rows are read: a deep page costs
            # a walk over small index entries, never over the multi-kilobyte rows.
            models.Index(fields=["id", "status", "created_at"], name="task_id_cover_idx"),
            models.Index(
                fields=["api_key", "id", "status", "created_at"], name="task_key_cover_idx"
            ),
            models.Index(fields=["model_name", "id"], name="task_model_id_idx"),
            models.Index(fields=["performance", "id"], name="task_performance_id_idx"),
            # The admin's per-day counts of a list filtered on model or performance.
            models.Index(
                fields=["model_name", "created_at", "status"], name="task_model_created_idx"
            ),
            models.Index(
                fields=["performance", "created_at", "status"], name="task_perf_created_idx"
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=[choice.value for choice in TaskStatus]),
                name="task_status_valid",
            ),
            models.CheckConstraint(condition=models.Q(progress__lte=100), name="task_progress_pct"),
            models.CheckConstraint(
                condition=models.Q(kind__in=[choice.value for choice in TaskKind]),
                name="task_kind_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_id} ({self.status})"

    @property
    def is_ended(self) -> bool:
        return self.status in ENDED_STATUSES


class WebhookDelivery(models.Model):
    """One attempt to deliver a task's webhook: kept so failures are visible, not just logged."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="webhook_deliveries")
    url = models.CharField(max_length=2048)
    attempt = models.PositiveSmallIntegerField()
    attempted_at = models.DateTimeField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    ok = models.BooleanField(default=False)
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["task_id", "attempt"]

    def __str__(self) -> str:
        return f"webhook #{self.attempt} for {self.task_id}: {'ok' if self.ok else 'failed'}"


class WorkerHeartbeat(models.Model):
    """One live engine worker process. A row whose ``beat_at`` is older than the lease means the
    worker died, and the task it held is put back in the queue by any other worker.

    ``beat_at`` is written with the database's clock, so machines with skewed clocks agree on
    who is alive.
    """

    name = models.CharField(max_length=128, unique=True)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    device = models.CharField(max_length=32, blank=True, default="")
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField(db_index=True)
    current_task_id = models.CharField(max_length=32, blank=True, default="")
    # Sampling steps done since the worker started, and the rate over the last beat interval.
    steps_total = models.PositiveBigIntegerField(default=0)
    step_rate = models.FloatField(default=0.0)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} (beat {self.beat_at:%H:%M:%S})"

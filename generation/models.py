"""API keys: named, scoped, revocable, stored only as hashes."""

from __future__ import annotations

from django.db import models


class ApiKeyScope(models.TextChoices):
    GENERATE = "generate", "generate: submit tasks, see and cancel its own"
    READ = "read", "read: see its own tasks"
    ADMIN = "admin", "admin: everything, every task"


class ApiKey(models.Model):
    """A client's key. The secret is shown once at creation; only its SHA-256 is kept.

    Keys look like ``fk_<prefix>_<secret>``; the prefix finds the row, the hash is compared in
    constant time.
    """

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # Per-key limits; 0 = the server default.
    requests_per_minute = models.PositiveIntegerField(default=0)
    max_queued_tasks = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["name"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} (fk_{self.prefix}_…)"

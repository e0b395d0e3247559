"""The Django admin for the task history: browse, filter, search and delete (with files)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from history.models import Task, WebhookDelivery
from history.services import task_delete


class WebhookDeliveryInline(admin.TabularInline):
    model = WebhookDelivery
    extra = 0
    can_delete = False
    readonly_fields = ("attempt", "url", "attempted_at", "status_code", "ok", "error")


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ("id", "task_id", "status", "created_at", "finished_at", "progress", "worker")
    list_filter = ("status", "created_at")
    search_fields = ("task_id", "req_params__prompt")
    date_hierarchy = "created_at"
    readonly_fields = [field.name for field in Task._meta.fields]
    inlines = [WebhookDeliveryInline]
    actions = ["delete_with_files"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_actions(self, request: HttpRequest) -> Any:
        actions = super().get_actions(request)
        # The stock bulk delete would leave the output files behind.
        actions.pop("delete_selected", None)
        return actions

    @admin.action(description="Delete selected ended tasks and their output files")
    def delete_with_files(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        deleted = files = skipped = 0
        for task in queryset:
            if not task.is_ended:
                skipped += 1
                continue
            files += task_delete(task=task)
            deleted += 1
        self.message_user(request, f"Deleted {deleted} tasks and {files} files.", messages.SUCCESS)
        if skipped:
            self.message_user(
                request, f"Skipped {skipped} waiting or running tasks.", messages.WARNING
            )

    def delete_model(self, request: HttpRequest, obj: Task) -> None:
        task_delete(task=obj)

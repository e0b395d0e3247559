"""The Django admin for the task history: browse, filter, search, inspect and delete (with files).

Deletes go through :mod:`history.services`, the same functions the API uses, so output files go
with their rows. Cancelling needs the engine's live channel, which lives in ``generation``; the
list only links to that room's admin views by URL name (``task-queue:*``).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.core.cache import cache
from django.db.models import QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, get_script_prefix, get_urlconf, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from history.admin_counts import DAILY_COUNT_DAYS, daily_counts
from history.admin_filters import (
    CappedCountPaginator,
    CreatedAtFilter,
    ModelFilter,
    PerformanceFilter,
)
from history.admin_media import thumbnail_jpeg
from history.files import resolve_output
from history.models import ENDED_STATUSES, Task, TaskStatus, WebhookDelivery
from history.selectors import task_filter_prompt
from history.services import task_delete, task_delete_range

# Columns the list never shows; req_params can be kilobytes per row (and megabytes of URLs).
LIST_DEFERRED = ("req_params", "error", "webhook_url", "base_url", "seeds", "worker")


class TaskChangeList(ChangeList):
    """Reads only the columns the list shows, plus the prompt pulled out of the JSON in SQL."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> Any:
        queryset = super().get_queryset(request, exclude_parameters)
        return queryset.defer(*LIST_DEFERRED).annotate(
            prompt_text=KeyTextTransform("prompt", "req_params")
        )

    def url_for_result(self, result: Any) -> str:
        # Django reverses the URL for each link of each row; the prefix is the same for all.
        if not hasattr(self, "_change_url"):
            self._change_url = super().url_for_result(result).replace(f"/{result.pk}/", "/{}/")
        return self._change_url.format(result.pk)


class DateRangeForm(forms.Form):
    start = forms.DateTimeField(
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}), label="From (enqueued at)"
    )
    end = forms.DateTimeField(
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}), label="To (enqueued at)"
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("start") and data.get("end") and data["start"] > data["end"]:
            raise forms.ValidationError("The start must not be after the end.")
        return data


class WebhookDeliveryInline(admin.TabularInline):
    model = WebhookDelivery
    extra = 0
    can_delete = False
    readonly_fields = ("attempt", "url", "attempted_at", "status_code", "ok", "error")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _queue_url(name: str, *args: str) -> str | None:
    """A URL of the live-queue views (``generation``), or None when they are not wired in."""
    try:
        return reverse(f"task-queue:{name}", args=args)
    except NoReverseMatch:
        return None


def _short(text: str | None, limit: int = 80) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "thumbnails",
        "prompt_column",
        "status_badge",
        "model_column",
        "performance_column",
        "created_at",
        "duration",
        "row_actions",
    )
    list_display_links = ("id", "prompt_column")
    list_filter = (
        "status",
        "kind",
        ("created_at", CreatedAtFilter),
        ModelFilter,
        PerformanceFilter,
    )
    # Only shows the search box: get_search_results searches the prompt's full-text index.
    search_fields = ("req_params__prompt",)
    search_help_text = "Search prompt words (or paste a task id)."
    list_per_page = 50
    paginator = CappedCountPaginator
    # Two full-table counts per page view are what make big changelists slow.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    inlines = [WebhookDeliveryInline]
    actions = ["delete_with_files"]
    fieldsets = (
        (
            "Task",
            {
                "fields": (
                    ("task_id", "status_badge"),
                    ("created_at", "started_at", "finished_at", "duration"),
                    ("progress", "worker", "attempts"),
                    "error_text",
                )
            },
        ),
        ("Result", {"fields": ("kind", "output_images", "seeds", "text")}),
        ("Request", {"fields": ("prompt_full", "negative_prompt", "parameters")}),
        ("Webhook", {"fields": ("webhook_url",)}),
    )
    readonly_fields = (
        "task_id",
        "status_badge",
        "created_at",
        "started_at",
        "finished_at",
        "duration",
        "progress",
        "worker",
        "attempts",
        "error_text",
        "output_images",
        "seeds",
        "kind",
        "text",
        "prompt_full",
        "negative_prompt",
        "parameters",
        "webhook_url",
    )

    # Permissions: the history is read-only; only ended tasks can be deleted. --------------
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and not obj.is_ended:
            return False
        return super().has_delete_permission(request, obj)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return TaskChangeList

    def action_checkbox(self, obj: Any) -> SafeString:
        # Django renders a form widget through the template engine for each row; the same
        # markup written directly is a tenth of the changelist's time at 50 rows.
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" '
            'aria-label="Select this object for an action - {}">',
            helpers.ACTION_CHECKBOX_NAME,
            obj.pk,
            str(obj),
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Task], search_term: str
    ) -> tuple[QuerySet[Task], bool]:
        if not search_term.strip():
            return queryset, False
        return task_filter_prompt(queryset, search_term), False

    def get_actions(self, request: HttpRequest) -> Any:
        actions = super().get_actions(request)
        # The stock bulk delete would leave the output files behind.
        actions.pop("delete_selected", None)
        return actions

    # List columns --------------------------------------------------------------------------
    @admin.display(description="Result")
    def thumbnails(self, task: Task) -> SafeString:
        shown = list(task.result or [])[:4]
        return format_html_join(
            "",
            '<a href="{}" target="_blank" rel="noopener"><img class="task-thumb" src="{}" '
            'alt="result {}" loading="lazy" width="48" height="48"></a>',
            (
                (_image_url(rel), _image_url(rel, thumbnail=True), index + 1)
                for index, rel in enumerate(shown)
            ),
        )

    @admin.display(description="Prompt")
    def prompt_column(self, task: Task) -> str:
        return _short(getattr(task, "prompt_text", None) or task.req_params.get("prompt")) or "—"

    @admin.display(description="Model")
    def model_column(self, task: Task) -> str:
        return task.model_name or "—"

    @admin.display(description="Performance")
    def performance_column(self, task: Task) -> str:
        return task.performance or "—"

    @admin.display(description="Status", ordering="status")
    def status_badge(self, task: Task) -> SafeString:
        label = task.status
        if task.status == TaskStatus.RUNNING:
            label = f"running {task.progress}%"
        return format_html('<span class="task-status task-{}">{}</span>', task.status, label)

    @admin.display(description="Duration")
    def duration(self, task: Task) -> str:
        if task.started_at is None:
            return "—"
        end = task.finished_at or timezone.now()
        return f"{(end - task.started_at).total_seconds():.1f} s"

    @admin.display(description="")
    def row_actions(self, task: Task) -> SafeString | str:
        if task.is_ended:
            return ""
        url = _queue_url("cancel", task.task_id)
        if url is None:
            return ""
        # The changelist is itself a form; the button submits the separate cancel form.
        return format_html(
            '<button type="submit" class="button task-cancel" form="task-cancel-form" '
            'formaction="{}">Cancel</button>',
            url,
        )

    # Detail fields -------------------------------------------------------------------------
    @admin.display(description="Error")
    def error_text(self, task: Task) -> SafeString | str:
        return format_html('<pre class="task-error">{}</pre>', task.error) if task.error else "—"

    @admin.display(description="Images")
    def output_images(self, task: Task) -> SafeString | str:
        if not task.result:
            return "—"
        return format_html_join(
            "",
            '<a class="task-image" href="{}" target="_blank" rel="noopener">'
            '<img src="{}" alt="result {}"><span>{}</span></a>',
            (
                (_image_url(rel), _image_url(rel), index + 1, rel)
                for index, rel in enumerate(task.result)
            ),
        )

    @admin.display(description="Prompt")
    def prompt_full(self, task: Task) -> str:
        return task.req_params.get("prompt") or "—"

    @admin.display(description="Negative prompt")
    def negative_prompt(self, task: Task) -> str:
        return task.req_params.get("negative_prompt") or "—"

    @admin.display(description="Parameters")
    def parameters(self, task: Task) -> SafeString:
        params = {
            key: value
            for key, value in task.req_params.items()
            if key not in ("prompt", "negative_prompt")
        }
        rows = format_html_join(
            "",
            "<tr><th>{}</th><td>{}</td></tr>",
            ((key, _param_text(value)) for key, value in params.items()),
        )
        raw = json.dumps(task.req_params, indent=2, ensure_ascii=False)
        return format_html(
            '<table class="task-params">{}</table>'
            "<details><summary>Request JSON</summary><pre>{}</pre></details>",
            rows,
            raw,
        )

    # Changelist extras: per-day counts and the cancel form ------------------------------------
    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if context is not None and "cl" in context:
            changelist = context["cl"]
            context["daily_counts"] = self._daily_counts(changelist)
            context["daily_count_days"] = DAILY_COUNT_DAYS
            context["queue_url"] = _queue_url("page")
        return response

    @staticmethod
    def _daily_counts(changelist: ChangeList) -> list[dict[str, Any]] | None:
        """The per-day panel for this list, or None where it would cost a read of every match.

        Filters on at most one of status, model and performance (with or without dates) are
        counted from an index holding ``created_at``; a search or combined filters are counted
        from their rows only when the list is short enough to have been counted exactly."""
        filters = {
            name
            for name in changelist.params
            if not name.startswith("created_at") and name not in ("o", "p", "q", "_to_field")
        }
        if not changelist.query and len(filters) <= 1:
            return daily_counts(changelist.queryset)
        if getattr(changelist.paginator, "capped", False):
            return None
        return daily_counts(changelist.queryset, indexed=False)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        task = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if task is not None and not task.is_ended:
            context["cancel_url"] = _queue_url("cancel", task.task_id)
        return super().change_view(request, object_id, form_url, context)

    # Deleting ------------------------------------------------------------------------------
    @admin.action(
        description="Delete selected ended tasks and their output files", permissions=["delete"]
    )
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

    def response_delete(self, request: HttpRequest, obj_display: str, obj_id: int) -> HttpResponse:
        # Django goes back to the list only for users who may change rows; nobody may here.
        super().response_delete(request, obj_display, obj_id)
        return HttpResponseRedirect(reverse("admin:history_task_changelist"))

    def delete_model(self, request: HttpRequest, obj: Task) -> None:
        task_delete(task=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        for task in queryset:
            if task.is_ended:
                task_delete(task=task)

    # Extra admin views: range delete and thumbnails --------------------------------------------
    def get_urls(self) -> list[Any]:
        return [
            path(
                "delete-range/",
                self.admin_site.admin_view(self.delete_range_view),
                name="history_task_delete_range",
            ),
            path(
                "image/<str:day>/<str:name>",
                self.admin_site.admin_view(self.image_view),
                name="history_task_image",
            ),
            *super().get_urls(),
        ]

    def image_view(self, request: HttpRequest, day: str, name: str) -> HttpResponse | FileResponse:
        """One output image at full size, or as a small JPEG made once and kept in the cache.

        The admin serves its own images so that it works whatever the public file URLs need
        (signed URLs, another host)."""
        if not self.has_view_permission(request):
            raise Http404("no such image")
        path_ = resolve_output(day, name)
        if path_ is None:
            raise Http404("no such image")
        if request.GET.get("size") != "thumb":
            return FileResponse(path_.open("rb"))
        key = f"fooocus:thumb:{day}/{name}:{path_.stat().st_mtime_ns}"
        data = cache.get(key)
        if data is None:
            data = thumbnail_jpeg(path_)
            cache.set(key, data, 24 * 3600)
        response = HttpResponse(data, content_type="image/jpeg")
        response["Cache-Control"] = "private, max-age=86400"
        return response

    def delete_range_view(self, request: HttpRequest) -> HttpResponse:
        """Delete the ended tasks enqueued in a time range, with their files (confirm first)."""
        if not self.has_delete_permission(request):
            raise Http404("not allowed")
        form = DateRangeForm(request.POST or None)
        matching = None
        if request.method == "POST" and form.is_valid():
            start, end = form.cleaned_data["start"], form.cleaned_data["end"]
            if request.POST.get("confirm") == "yes":
                outcome = task_delete_range(start=start, end=end)
                self.message_user(
                    request,
                    f"Deleted {outcome.deleted} tasks and {outcome.files_deleted} files.",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(reverse("admin:history_task_changelist"))
            # The count is what gets confirmed: freeze the range it was made for.
            for field in form.fields.values():
                field.widget.attrs["readonly"] = True
            matching = Task.objects.filter(
                created_at__gte=start, created_at__lte=end, status__in=ENDED_STATUSES
            ).count()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Delete tasks in a date range",
            "form": form,
            "matching": matching,
        }
        return TemplateResponse(request, "admin/history/task/delete_range.html", context)


@functools.lru_cache(maxsize=16)
def _reversed(name: str, urlconf: Any, prefix: str) -> str:
    # A list page links each of its 50 rows' images; reverse() once per URL configuration.
    return reverse(name, urlconf=urlconf)


def _image_url(relative: str, *, thumbnail: bool = False) -> str:
    """``relative`` is ``YYYY-MM-DD/name`` as stored; the image view checks it again."""
    urlconf = get_urlconf() or settings.ROOT_URLCONF
    changelist = _reversed("admin:history_task_changelist", urlconf, get_script_prefix())
    url = f"{changelist}image/{relative}"
    return f"{url}?size=thumb" if thumbnail else url


def _param_text(value: Any) -> str:
    if isinstance(value, str):
        return value or '""'
    return json.dumps(value, ensure_ascii=False)

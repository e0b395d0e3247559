"""Changelist filters on request fields inside ``req_params``, and a paginator for big lists."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.cache import cache
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.http import HttpRequest
from django.utils.functional import cached_property

from history.models import Task

# Offering every value ever used would scan the whole table on each page view; the latest tasks
# show the models and performances an operator actually uses. Older values still filter by URL.
RECENT_TASKS_SCANNED = 2000
# Reading 2,000 request documents costs tens of milliseconds; the choices rarely change.
LOOKUPS_CACHE_SECONDS = 60


def recent_param_values(key: str, *, limit: int = RECENT_TASKS_SCANNED) -> list[str]:
    """Distinct values of ``req_params[key]`` among the latest ``limit`` tasks, sorted
    (kept a minute in the cache)."""
    cache_key = f"fooocus:admin:recent:{key}:{limit}"
    cached = cache.get(cache_key)
    if isinstance(cached, list):
        return list(cached)
    values = (
        Task.objects.order_by("-id")
        .annotate(value=KeyTextTransform(key, "req_params"))
        .values_list("value", flat=True)[:limit]
    )
    found = sorted({value for value in values if value})
    cache.set(cache_key, found, LOOKUPS_CACHE_SECONDS)
    return found


class ReqParamFilter(admin.SimpleListFilter):
    """Filter on one text key of ``req_params`` (exact match)."""

    param_key = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        values = recent_param_values(self.param_key)
        selected = self.value()
        if selected and selected not in values:
            values.append(selected)
        return [(value, value) for value in values]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> QuerySet[Task]:
        if self.value():
            return queryset.filter(**{f"req_params__{self.param_key}": self.value()})
        return queryset


class ModelFilter(ReqParamFilter):
    title = "model"
    parameter_name = "model"
    param_key = "base_model_name"


class PerformanceFilter(ReqParamFilter):
    title = "performance"
    parameter_name = "performance"
    param_key = "performance_selection"


class CappedCountPaginator(Paginator):
    """Counts a filtered list only up to ``COUNT_CAP`` rows.

    Filters on request fields and prompt search match rows by their JSON, which no index
    covers: an exact count reads every task, while a capped count stops early. The unfiltered
    list is counted exactly (SQLite answers that from an index).
    """

    COUNT_CAP = 2000
    # True when the count stopped at the cap: the list holds more than ``count`` rows.
    capped = False

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet) or not queryset.query.where:
            return int(super().count)
        counted = queryset[: self.COUNT_CAP + 1].count()
        self.capped = counted > self.COUNT_CAP
        return min(counted, self.COUNT_CAP)

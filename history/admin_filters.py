"""Changelist filters on the request's model and performance, and a paginator for big lists."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.paginator import Page, Paginator
from django.db import connection
from django.db.models import Max, Min, QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property

from history.models import Task
from history.selectors import newest_first_in_range, page_rows

# A sidebar longer than this is no use; further values still filter by URL.
MAX_LOOKUPS = 100
# The values in use rarely change; a new model shows in the sidebar within a minute.
LOOKUPS_CACHE_SECONDS = 60


def distinct_values(column: str, *, limit: int = MAX_LOOKUPS) -> list[str]:
    """Every non-empty value of an indexed column, sorted (kept a minute in the cache).

    One index seek per value ("the smallest value above the last one"), so the cost grows with
    the number of distinct values, never with the number of tasks."""
    cache_key = f"fooocus:admin:values:{column}:{limit}"
    cached = cache.get(cache_key)
    if isinstance(cached, list):
        return list(cached)
    found: list[str] = []
    last = ""
    while len(found) < limit:
        value = Task.objects.filter(**{f"{column}__gt": last}).aggregate(v=Min(column))["v"]
        if value is None:
            break
        found.append(value)
        last = value
    cache.set(cache_key, found, LOOKUPS_CACHE_SECONDS)
    return found


class ColumnFilter(admin.SimpleListFilter):
    """Filter on one of the request fields the Task row keeps in an indexed column."""

    column = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        values = distinct_values(self.column)
        selected = self.value()
        if selected and selected not in values:
            values.append(selected)
        return [(value, value) for value in values]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> QuerySet[Task]:
        if self.value():
            return queryset.filter(**{self.column: self.value()})
        return queryset


class ModelFilter(ColumnFilter):
    title = "model"
    parameter_name = "model"
    column = "model_name"


class PerformanceFilter(ColumnFilter):
    title = "performance"
    parameter_name = "performance"
    column = "performance"


class CreatedAtFilter(admin.DateFieldListFilter):
    """Django's date filter; a plain range under the default order (newest first) is answered
    by walking the id index (:func:`history.selectors.newest_first_in_range`) instead of
    sorting every task of the range by id."""

    def queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> QuerySet[Task]:
        used: dict[str, Any] = dict(self.used_parameters)
        # Lists of values since Django 5.0 (the last one counts, as in Django's own filters).
        params = {
            key: values[-1] if isinstance(values, list) else values
            for key, values in used.items()
            if values
        }
        start, end = params.pop("created_at__gte", None), params.pop("created_at__lt", None)
        if params or (start is None and end is None) or "o" in request.GET:
            return super().queryset(request, queryset)  # type: ignore[return-value]
        field = Task._meta.get_field("created_at")
        try:
            since = field.to_python(start) if start is not None else None
            until = field.to_python(end) if end is not None else None
        except ValidationError as error:
            raise IncorrectLookupParameters(error) from error
        return newest_first_in_range(queryset, since, until, end_inclusive=False)


def estimated_row_count(model: type[Task]) -> int | None:
    """A cheap estimate of the table's rows, or None where there is none yet.

    PostgreSQL keeps one (``pg_class.reltuples``, refreshed by autovacuum). SQLite keeps none
    without ANALYZE, so the span of ids stands in (``max - min + 1``, two seeks at the ends of
    the primary key): exact until rows are deleted, too high by the deleted rows after."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [model._meta.db_table]
            )
            row = cursor.fetchone()
        return int(row[0]) if row and row[0] >= 0 else None
    # Two statements: SQLite answers a lone MIN or MAX from the end of the index, but walks
    # every row for both in one.
    low = model.objects.aggregate(v=Min("id"))["v"]
    high = model.objects.aggregate(v=Max("id"))["v"]
    return None if low is None or high is None else int(high - low + 1)


class CappedCountPaginator(Paginator):
    """A paginator for lists of a million tasks.

    * A filtered or searched list is counted only up to ``COUNT_CAP`` rows: the count stops
      early instead of visiting every match.
    * The unfiltered list is counted exactly while it is small; above ``ESTIMATE_ABOVE`` rows
      it shows the database's estimate (:func:`estimated_row_count`) and says "about": an exact
      ``count(*)`` visits every row (70 ms at a million on SQLite).
    * A page's rows are chosen by id first and only then read (:func:`history.selectors.
      page_rows`), so page 10,000 costs an index walk, not a read of 500,000 rows.
    """

    COUNT_CAP = 2000
    ESTIMATE_ABOVE = 50_000
    # True when the count stopped at the cap: the list holds more than ``count`` rows.
    capped = False
    # True when the count is the database's estimate.
    estimated = False

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return int(super().count)
        if not queryset.query.where:
            estimate = estimated_row_count(queryset.model)
            if estimate is not None and estimate > self.ESTIMATE_ABOVE:
                self.estimated = True
                return estimate
            return int(super().count)
        # Only the ids: the list's annotations (the prompt out of the JSON) would read each row.
        # On SQLite the list's order stays: it makes it walk the index the page walks, where
        # without one it may count by reading the rows. PostgreSQL without an order takes the
        # matches from the index that fits the filter (the GIN index of a search) and stops.
        ids = queryset.values("pk")
        if connection.vendor == "postgresql":
            ids = ids.order_by()
        counted = ids[: self.COUNT_CAP + 1].count()
        self.capped = counted > self.COUNT_CAP
        return min(counted, self.COUNT_CAP)

    def page(self, number: Any) -> Page:
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        queryset = self.object_list
        rows = (
            page_rows(queryset, bottom, top - bottom)
            if isinstance(queryset, QuerySet)
            else queryset[bottom:top]
        )
        return self._get_page(rows, number, self)  # type: ignore[attr-defined]

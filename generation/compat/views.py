"""Fooocus-API's query and control routes, answered from the Task table and the live cache."""

from __future__ import annotations

from typing import Any

from django.db.models import Q
from django.http import FileResponse, HttpRequest, HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from generation.access import Caller
from generation.announce import wake_workers
from generation.compat import presenters, schema
from generation.events import clean_vram_request, control_request
from generation.views import (
    _check_signature,
    caller_scope,
    file_response,
    query_error,
    request_base,
)
from history import selectors, services
from history.files import resolve_output
from history.models import ENDED_STATUSES, Task, TaskStatus


def _visible(request: Request) -> Any:
    scope = caller_scope(request)
    tasks = Task.objects.all()
    return tasks if scope is None else tasks.filter(api_key=scope)


class QueryJobSerializer(serializers.Serializer):
    job_id = serializers.CharField()
    require_step_preview = serializers.BooleanField(default=False)


class JobHistorySerializer(serializers.Serializer):
    job_id = serializers.CharField(required=False, allow_blank=True, default="")
    page = serializers.IntegerField(default=0, min_value=0)
    page_size = serializers.IntegerField(default=20, min_value=1, max_value=100)
    delete = serializers.BooleanField(default=False)


class QueryJobView(APIView):
    """``GET /v1/generation/query-job?job_id=&require_step_preview=``."""

    required_scope = "read"

    @extend_schema(parameters=[QueryJobSerializer], responses=schema.QUERY_JOB_RESPONSES)
    def get(self, request: Request) -> Response:
        serializer = QueryJobSerializer(data=request.query_params)
        if not serializer.is_valid():
            raise query_error(serializer)
        query = serializer.validated_data
        task_id = presenters.task_id_of(query["job_id"])
        task = (
            selectors.task_get(task_id=task_id, api_key=caller_scope(request)) if task_id else None
        )
        if task is None:
            return Response(presenters.not_found_job(), status=404)
        return Response(
            presenters.async_job(
                task, request_base(request), with_preview=query["require_step_preview"]
            )
        )


class JobQueueView(APIView):
    """``GET /v1/generation/job-queue``: ``running_size`` counts running and waiting jobs."""

    required_scope = "read"

    @extend_schema(responses=schema.JOB_QUEUE_RESPONSES)
    def get(self, request: Request) -> Response:
        tasks = _visible(request)
        active = tasks.filter(Q(status=TaskStatus.PENDING) | Q(status=TaskStatus.RUNNING))
        last = tasks.order_by("-id").values_list("task_id", flat=True).first()
        return Response(
            {
                "running_size": active.count(),
                "finished_size": tasks.filter(status__in=ENDED_STATUSES).count(),
                "last_job_id": presenters.job_id(last) if last else None,
            }
        )


class JobHistoryView(APIView):
    """``GET /v1/generation/job-history?job_id=&page=&page_size=&delete=``.

    ``history``: ended jobs newest first, paginated (Fooocus-API ignored the page, #354);
    ``queue``: running and waiting jobs in queue order. ``delete=true&job_id=`` deletes one
    ended job and its files."""

    required_scope = "read"

    @extend_schema(parameters=[JobHistorySerializer], responses=schema.JOB_HISTORY_RESPONSES)
    def get(self, request: Request) -> Response:
        serializer = JobHistorySerializer(data=request.query_params)
        if not serializer.is_valid():
            raise query_error(serializer)
        query = serializer.validated_data
        tasks = _visible(request)
        if query["job_id"]:
            task_id = presenters.task_id_of(query["job_id"])
            tasks = tasks.filter(task_id=task_id) if task_id else tasks.none()
        if query["delete"]:
            return self._delete(request, query["job_id"], tasks)
        offset = query["page"] * query["page_size"]
        history = tasks.filter(status__in=ENDED_STATUSES).order_by("-id")
        queue = tasks.filter(status__in=(TaskStatus.RUNNING, TaskStatus.PENDING)).order_by("id")
        return Response(
            {
                "history": [
                    presenters.history_item(task)
                    for task in history[offset : offset + query["page_size"]]
                ],
                "queue": [presenters.history_item(task) for task in queue],
            }
        )

    @staticmethod
    def _delete(request: Request, job_id: str, tasks: Any) -> Response:
        if not job_id:
            error = ValidationError({"job_id": ["delete=true needs the job_id to delete"]})
            error.location = "query"  # type: ignore[attr-defined]
            raise error
        caller = request.user
        if not isinstance(caller, Caller) or not caller.can("generate"):
            return Response({"detail": "deleting a job needs the 'generate' scope"}, status=403)
        task = tasks.first()
        if task is None:
            return Response({"message": "Not found"}, status=404)
        if not task.is_ended:
            return Response(
                {
                    "message": "Not finished",
                    "detail": "only ended jobs are deleted; stop it first (/v1/generation/stop)",
                },
                status=409,
            )
        services.task_delete(task=task)
        return Response({"message": "Deleted"})


class StopView(APIView):
    """``POST /v1/generation/stop``: stop the running jobs (images already made are kept)."""

    required_scope = "admin"

    @extend_schema(request=None, responses=schema.STOP_RESPONSES)
    def post(self, request: Request) -> Response:
        for task in selectors.task_list_running():
            control_request(task.task_id, "stop")
        return Response({"msg": "success"})


class CleanVramView(APIView):
    """``GET /v1/engines/clean_vram``: every engine worker unloads its models when idle."""

    required_scope = "admin"

    @extend_schema(responses=schema.CLEAN_VRAM_RESPONSES)
    def get(self, request: Request) -> Response:
        request_id = clean_vram_request()
        wake_workers()
        return Response(
            {
                "message": "ok",
                "request_id": request_id,
                "detail": "each engine worker unloads its models as soon as it is idle",
            }
        )


def files(request: HttpRequest, day: str, name: str) -> HttpResponse | FileResponse:
    """``GET /files/<date>/<name>``: Fooocus-API's path to the output files."""
    _check_signature(request)
    return file_response(request, resolve_output(day, name))

"""OpenAPI descriptions of Fooocus-API's query and control routes (its response shapes)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer
from rest_framework import serializers

from generation.schema import COMMON_ERRORS, ValidationErrorSerializer


class GeneratedImageSerializer(serializers.Serializer):
    base64 = serializers.CharField(allow_null=True)
    url = serializers.CharField(allow_null=True)
    seed = serializers.CharField()
    finish_reason = serializers.ChoiceField(
        choices=["SUCCESS", "QUEUE_IS_FULL", "USER_CANCEL", "ERROR"]
    )


class AsyncJobSerializer(serializers.Serializer):
    job_id = serializers.CharField()
    job_type = serializers.CharField()
    job_stage = serializers.ChoiceField(choices=["WAITING", "RUNNING", "SUCCESS", "ERROR"])
    job_progress = serializers.IntegerField()
    job_status = serializers.CharField(allow_null=True)
    job_step_preview = serializers.CharField(allow_null=True)
    job_result = GeneratedImageSerializer(many=True, allow_null=True)


class JobQueueSerializer(serializers.Serializer):
    running_size = serializers.IntegerField()
    finished_size = serializers.IntegerField()
    last_job_id = serializers.CharField(allow_null=True)


class JobHistoryItemSerializer(serializers.Serializer):
    job_id = serializers.CharField()
    job_type = serializers.CharField()
    is_finished = serializers.BooleanField()
    in_queue_mills = serializers.IntegerField()
    start_mills = serializers.IntegerField()
    finish_mills = serializers.IntegerField()
    job_status = serializers.CharField()


class JobHistorySerializer(serializers.Serializer):
    history = JobHistoryItemSerializer(many=True)
    queue = JobHistoryItemSerializer(many=True)


class MessageSerializer(serializers.Serializer):
    message = serializers.CharField()
    detail = serializers.CharField(required=False)


class StopSerializer(serializers.Serializer):
    msg = serializers.CharField()


class CleanVramSerializer(serializers.Serializer):
    message = serializers.CharField()
    request_id = serializers.CharField()
    detail = serializers.CharField()


QUERY_JOB_RESPONSES = {
    200: AsyncJobSerializer,
    404: OpenApiResponse(AsyncJobSerializer, "no such job (Fooocus-API's Not Found job)"),
    422: ValidationErrorSerializer,
    **COMMON_ERRORS,
}
JOB_QUEUE_RESPONSES = {200: JobQueueSerializer, **COMMON_ERRORS}
JOB_HISTORY_RESPONSES = {
    200: OpenApiResponse(
        PolymorphicProxySerializer(
            component_name="JobHistoryOrDeleted",
            serializers=[JobHistorySerializer, MessageSerializer],
            resource_type_field_name=None,
        ),
        "the lists, or with delete=true {message: Deleted}",
    ),
    404: OpenApiResponse(MessageSerializer, "delete=true: no such job"),
    409: OpenApiResponse(MessageSerializer, "delete=true: the job has not ended"),
    422: ValidationErrorSerializer,
    **COMMON_ERRORS,
}
STOP_RESPONSES = {200: StopSerializer, **COMMON_ERRORS}
CLEAN_VRAM_RESPONSES = {200: CleanVramSerializer, **COMMON_ERRORS}

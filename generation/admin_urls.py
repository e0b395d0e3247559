"""The live queue's admin URLs, mounted under ``/admin/queue/`` (staff only)."""

from django.contrib import admin
from django.urls import path

from generation import admin_views

app_name = "task-queue"

urlpatterns = [
    path("", admin.site.admin_view(admin_views.queue_page), name="page"),
    path("state", admin.site.admin_view(admin_views.queue_state), name="state"),
    path(
        "cancel/<str:task_id>",
        admin.site.admin_view(admin_views.task_cancel_view),
        name="cancel",
    ),
]

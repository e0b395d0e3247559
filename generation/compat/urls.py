"""Fooocus-API's plain routes (its generation routes are consumers: ``routing``)."""

from django.urls import path, re_path

from generation.compat import views

urlpatterns = [
    path("v1/generation/query-job", views.QueryJobView.as_view(), name="compat-query-job"),
    path("v1/generation/job-queue", views.JobQueueView.as_view(), name="compat-job-queue"),
    path("v1/generation/job-history", views.JobHistoryView.as_view(), name="compat-job-history"),
    path("v1/generation/stop", views.StopView.as_view(), name="compat-stop"),
    path("v1/engines/clean_vram", views.CleanVramView.as_view(), name="compat-clean-vram"),
    re_path(r"^files/(?P<day>[^/]+)/(?P<name>[^/]+)$", views.files, name="compat-files"),
]

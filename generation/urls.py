from django.urls import path, re_path
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularSwaggerView

from generation import health, views
from generation.schema import GenerateSchemaView
from generation.tools.schema import DescribeImageSchemaView, GenerateMaskSchemaView

urlpatterns = [
    # Answered by generation.consumers.GenerateConsumer; listed here for the OpenAPI document.
    path("v1/engine/generate/", GenerateSchemaView.as_view(), name="generate"),
    path("v1/tools/describe-image", DescribeImageSchemaView.as_view(), name="describe-image"),
    path("v1/tools/generate_mask", GenerateMaskSchemaView.as_view(), name="generate-mask"),
    path("openapi.json", SpectacularJSONAPIView.as_view(), name="openapi"),
    path("docs", SpectacularSwaggerView.as_view(url_name="openapi"), name="docs"),
    path("tasks", views.TaskListView.as_view(), name="task-list"),
    path("tasks/<str:task_id>", views.TaskDetailView.as_view(), name="task-detail"),
    path("tasks/<str:task_id>/cancel", views.TaskCancelView.as_view(), name="task-cancel"),
    path("v1/engine/control", views.EngineControlView.as_view(), name="engine-control"),
    # Also with the slash FooocusAPI's docs give it (one entry in the OpenAPI document).
    path("v1/engine/control/", views.EngineControlView.as_view(schema=None)),
    path("v1/engines/all-models", views.AllModelsView.as_view(), name="all-models"),
    path("v1/engines/styles", views.StylesView.as_view(), name="styles"),
    path("v1/engines/presets", views.PresetsView.as_view(), name="presets"),
    path("v1/engines/options", views.OptionsView.as_view(), name="options"),
    path("ping", views.ping, name="ping"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    re_path(r"^outputs/(?P<day>[^/]+)/(?P<name>[^/]+)$", views.output_file, name="output-file"),
    re_path(r"^inputs/(?P<name>[^/]+)$", views.input_file, name="input-file"),
    path("", views.example_page, name="example"),
    path("example.html", views.example_page),
]

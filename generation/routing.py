"""The ASGI routes of the API that Django's URLconf does not answer (Channels' convention).

``http_urlpatterns`` come before Django's catch-all in ``fooocus_site.asgi``;
``channel_routes`` map channel names to consumers for the engine workers' channel listener.
Import this module only after Django is set up (``get_asgi_application()``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.urls import re_path

from generation.compat.routing import http_routes as fooocus_api_routes
from generation.consumers import EngineChannelConsumer, GenerateConsumer
from generation.tools.consumers import DescribeImageConsumer, GenerateMaskConsumer

http_urlpatterns = [
    re_path(r"^v1/engine/generate/?$", GenerateConsumer.as_asgi()),
    re_path(r"^v1/tools/describe-image/?$", DescribeImageConsumer.as_asgi()),
    re_path(r"^v1/tools/generate_mask/?$", GenerateMaskConsumer.as_asgi()),
    *fooocus_api_routes,  # Fooocus-API's generation routes (generation.compat)
]

channel_routes: dict[str, Any] = {
    settings.FOOOCUS_WORKER_CHANNEL: EngineChannelConsumer.as_asgi(),
}

"""The ASGI application: the generate consumer, Django for everything else, and the engine
workers' channel (``python manage.py runworker fooocus-engine``)."""

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fooocus_site.settings")
# Static files (the admin's CSS, Swagger UI) are served by the same process: there is no
# separate web server in front of daphne in the embedded mode.
django_application = ASGIStaticFilesHandler(get_asgi_application())

from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import re_path  # noqa: E402

from generation.consumers import GenerateConsumer  # noqa: E402
from generation.tools.consumers import DescribeImageConsumer, GenerateMaskConsumer  # noqa: E402
from generation.worker import EngineChannelConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": URLRouter(
            [
                re_path(r"^v1/engine/generate/?$", GenerateConsumer.as_asgi()),
                re_path(r"^v1/tools/describe-image/?$", DescribeImageConsumer.as_asgi()),
                re_path(r"^v1/tools/generate_mask/?$", GenerateMaskConsumer.as_asgi()),
                re_path(r"", django_application),  # type: ignore[arg-type]
            ]
        ),
        "channel": ChannelNameRouter(
            {settings.FOOOCUS_WORKER_CHANNEL: EngineChannelConsumer.as_asgi()}
        ),
    }
)

"""The ASGI application: the routes of ``generation.routing`` (the generate consumer, the engine
workers' channel), and Django for everything else.

Settings are checked before anything is served: a bad value stops daphne here with the checks'
messages (as ``manage.py`` commands stop), instead of failing at the first request.
"""

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fooocus_site.settings")
# Static files (the admin's CSS, Swagger UI) are served by the same process: there is no
# separate web server in front of daphne in the embedded mode.
django_application = ASGIStaticFilesHandler(get_asgi_application())

from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from generation.checks import stop_on_settings_errors  # noqa: E402
from generation.routing import channel_routes, http_urlpatterns  # noqa: E402

stop_on_settings_errors()

application = ProtocolTypeRouter(
    {
        "http": URLRouter(
            [
                *http_urlpatterns,
                re_path(r"", django_application),  # type: ignore[arg-type]
            ]
        ),
        "channel": ChannelNameRouter(channel_routes),
    }
)

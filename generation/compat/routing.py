"""The ASGI routes of Fooocus-API's generation endpoints (before Django's catch-all)."""

from django.urls import re_path

from generation.compat.consumers import FooocusApiGenerateConsumer

_V1 = "text-to-image|image-upscale-vary|image-inpaint-outpaint|image-prompt|image-enhance"
_V2 = "text-to-image-with-ip|image-upscale-vary|image-inpaint-outpaint|image-prompt|image-enhance"

http_routes = [
    re_path(
        rf"^v(?P<version>1)/generation/(?P<name>{_V1})/?$", FooocusApiGenerateConsumer.as_asgi()
    ),
    re_path(
        rf"^v(?P<version>2)/generation/(?P<name>{_V2})/?$", FooocusApiGenerateConsumer.as_asgi()
    ),
]

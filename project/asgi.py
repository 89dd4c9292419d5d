"""ASGI entry point: HTTP to Django (GraphQL and incoming_data); WebSocket /graphql/ to the
GraphQL subscription consumer."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path  # noqa: E402

from schema import schema  # noqa: E402
from schema.consumers import LiveConsumer  # noqa: E402

http_app = django_asgi
if settings.DEBUG:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    http_app = ASGIStaticFilesHandler(django_asgi)

application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": URLRouter([path("graphql/", LiveConsumer.build(schema))]),
    }
)

"""ASGI entry point: HTTP to Django (GraphQL and incoming_data) behind the body guard;
WebSocket /graphql/ to the GraphQL subscription consumer.

Importing this module also installs the daphne guard (project/body_guard.py): daphne imports the
application before it builds its server, so `daphne project.asgi:application` and
`manage.py serve` both refuse over-large or unwanted bodies on headers, in the reactor; and
daphne is made to send WebSocket close reasons (project/close_reasons.py), and the garbage
collector is set for a process that holds many sockets (project/collector.py)."""

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path  # noqa: E402

from project.body_guard import BodyGuard, install_daphne_guard  # noqa: E402
from project.close_reasons import install_close_reasons  # noqa: E402
from project.collector import tune_collector  # noqa: E402
from schema import schema  # noqa: E402
from schema.consumers import LiveConsumer  # noqa: E402

http_app: Any = django_asgi
if settings.SERVE_STATIC:  # else the proxy serves STATIC_ROOT (deploy/nginx.conf)
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    http_app = ASGIStaticFilesHandler(django_asgi)
http_app = BodyGuard(http_app)
install_daphne_guard()
install_close_reasons()

application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": URLRouter([path("graphql/", LiveConsumer.build(schema))]),
    }
)
tune_collector()

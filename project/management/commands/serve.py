"""`manage.py serve`: the whole service in one process.

Daphne serves HTTP and WebSocket in the main thread; the Huey consumer runs as threads beside
it. With the embedded defaults (SQLite, in-memory channel layer) this is a complete deployment
for one machine; in production run daphne and `manage.py run_huey` as separate processes.
"""

import asyncio
import signal
from typing import Any

from channels.routing import get_default_application
from daphne.endpoints import build_endpoint_description_strings
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.management.base import BaseCommand, CommandParser
from huey.contrib.djhuey import HUEY
from twisted.internet import reactor

from project.body_guard import install_daphne_guard


class Command(BaseCommand):
    help = "Run the ASGI server and the in-process queue consumer together."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--workers",
            type=int,
            default=settings.SERVE_WORKERS,
            help="Queue consumer threads (default: SERVE_WORKERS).",
        )

    def handle(self, *args: Any, host: str, port: int, workers: int, **options: Any) -> None:
        # SqliteHuey is polled (Redis blocks on the queue instead): the default back-off
        # grows to 10 s when idle, which would hold a lone event that long. Cap it at 0.25 s.
        consumer = HUEY.create_consumer(
            workers=workers,
            worker_type="thread",
            periodic=True,
            initial_delay=0.05,
            max_delay=0.25,
        )
        consumer.start()
        base = f"http://{host}:{port}"
        self.stdout.write(
            f"Data Pusher on {base}\n"
            f"  Dashboard        {base}/\n"
            f"  GraphQL API      {base}/graphql/"
            + (" (GraphiQL in a browser)" if settings.GRAPHIQL else "")
            + f"\n  GraphQL WS       ws://{host}:{port}/graphql/ (graphql-transport-ws)\n"
            f"  Incoming data    POST {base}/server/incoming_data/\n"
            f"  Queue consumer   {workers} threads on {type(HUEY).__name__}\n"
            "Stop with Ctrl-C or SIGTERM: open WebSockets get close code 1001, in-flight "
            "deliveries finish first."
        )
        self.stdout.flush()

        def install_signal_handlers() -> None:
            # Called by daphne right before the reactor runs, with the reactor's asyncio loop
            # set as the current one.
            loop = asyncio.get_event_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, _shut_down, server)

        # Refuse over-large and unwanted bodies on headers, in the reactor (project/body_guard.py;
        # importing project.asgi installs it too, this makes it independent of that import).
        install_daphne_guard()
        application = get_default_application()
        if not settings.SERVE_STATIC:  # the whole service: the dashboard's files included
            application = ASGIStaticFilesHandler(application)
        server = Server(
            application=application,
            endpoints=build_endpoint_description_strings(host=host, port=port),
            signal_handlers=False,  # ours: close sockets first, then stop
            ready_callable=install_signal_handlers,
            verbosity=0,
        )
        try:
            server.run()
        finally:
            consumer.stop(graceful=True)  # in-flight deliveries finish
            self.stdout.write("Stopped.")


CLOSE_GRACE_SECONDS = 1.0


def _shut_down(server: Server) -> None:
    """Tell WebSocket clients we are going away (1001) instead of dropping them, give the
    close frames a moment to leave, then stop the reactor."""
    for protocol in list(server.connections):
        if isinstance(protocol, WebSocketProtocol) and protocol.state == protocol.STATE_OPEN:
            # autobahn's public sendClose only allows 1000 and 3000-4999; 1001 "going away"
            # is the code RFC 6455 gives a server that shuts down.
            protocol.sendCloseFrame(code=1001, reasonUtf8=b"server shutting down")
    reactor.callLater(CLOSE_GRACE_SECONDS, reactor.stop)  # type: ignore[arg-type,misc]

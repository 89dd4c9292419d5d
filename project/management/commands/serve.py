"""`manage.py serve`: the whole service in one process.

Daphne serves HTTP and WebSocket in the main thread; the Huey consumer runs as threads beside
it. With the embedded defaults (SQLite, in-memory channel layer) this is a complete deployment
for one machine; in production run daphne and `manage.py run_huey` as separate processes.
"""

from typing import Any

from channels.routing import get_default_application
from daphne.endpoints import build_endpoint_description_strings
from daphne.server import Server
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from huey.contrib.djhuey import HUEY


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
        consumer = HUEY.create_consumer(workers=workers, worker_type="thread", periodic=True)
        consumer.start()
        base = f"http://{host}:{port}"
        self.stdout.write(
            f"Data Pusher on {base}\n"
            f"  GraphQL API      {base}/graphql/"
            + (" (GraphiQL in a browser)" if settings.DEBUG else "")
            + f"\n  Queue consumer   {workers} threads on {type(HUEY).__name__}\n"
            "Stop with Ctrl-C or SIGTERM (in-flight deliveries finish first)."
        )
        self.stdout.flush()
        try:
            # Twisted installs its own SIGINT/SIGTERM handlers: they stop the reactor, then
            # the consumer is stopped gracefully below.
            Server(
                application=get_default_application(),
                endpoints=build_endpoint_description_strings(host=host, port=port),
                signal_handlers=True,
                verbosity=0,
            ).run()
        finally:
            consumer.stop(graceful=True)
            self.stdout.write("Stopped.")

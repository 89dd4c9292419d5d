"""gunicorn for the HTTP API in production (README: Production): incoming_data, GraphQL queries
and mutations, the admin. WebSocket /graphql/ is daphne's.

    gunicorn -c deploy/gunicorn.conf.py --bind 127.0.0.1:8001

Sync workers, one request at a time per process: behind nginx, which buffers whole requests and
responses, a worker never waits on a slow client; Django's request path is CPU-bound Python, so
processes (one per core or two) beat threads under the GIL; and each process keeps exactly one
persistent database connection (DATABASE_CONN_MAX_AGE, 60 s by default under WSGI). Command-line
flags and GUNICORN_CMD_ARGS override what is here (e.g. `--threads 4` for gthread workers, whose
threads also keep one connection each).
"""

import os

wsgi_app = "project.wsgi:application"
bind = [os.environ.get("GUNICORN_BIND", "127.0.0.1:8001")]
workers = int(os.environ.get("GUNICORN_WORKERS") or 2)
worker_class = "sync"
timeout = 30  # a worker stuck this long is killed and replaced
graceful_timeout = 30  # SIGTERM: finish the requests in progress first
accesslog = None  # nginx keeps the access log
errorlog = "-"

"""WSGI entry point: the HTTP API (incoming_data, GraphQL queries and mutations, admin) on
gunicorn in production (deploy/gunicorn.conf.py; README: Production). WebSocket /graphql/ needs
daphne (project/asgi.py).

Importing this module before Django loads its settings marks the process as a WSGI server:
database connections are then persistent by default (DATABASE_CONN_MAX_AGE, project/settings.py)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
application = get_wsgi_application()

from django.conf import settings
from django.contrib import admin
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.generic import TemplateView

from delivery.views import incoming_data
from schema import schema
from schema.views import DataPusherGraphQLView

urlpatterns = [
    # The live dashboard: a static page, a client of the GraphQL API (project/static/dashboard).
    path("", TemplateView.as_view(template_name="dashboard.html"), name="dashboard"),
    path("admin/", admin.site.urls),
    path("server/incoming_data/", incoming_data, name="incoming_data"),
    # CSRF-exempt is safe: the view authenticates by bearer token only, never by cookie.
    path(
        "graphql/",
        csrf_exempt(
            DataPusherGraphQLView.as_view(
                schema=schema, graphql_ide="graphiql" if settings.GRAPHIQL else None
            )
        ),
    ),
]

# Unexpected errors of incoming_data and /graphql/ in their JSON shapes (project/middleware.py).
handler500 = "project.middleware.server_error"

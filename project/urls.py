from django.conf import settings
from django.contrib import admin
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from schema import schema
from schema.views import DataPusherGraphQLView

urlpatterns = [
    path("admin/", admin.site.urls),
    # CSRF-exempt is safe: the view authenticates by bearer token only, never by cookie.
    path(
        "graphql/",
        csrf_exempt(
            DataPusherGraphQLView.as_view(
                schema=schema, graphql_ide="graphiql" if settings.DEBUG else None
            )
        ),
    ),
]

from django.http import HttpRequest, HttpResponse
from strawberry.django.context import StrawberryDjangoContext
from strawberry.django.views import GraphQLView

from identity.auth import token_from_header
from schema.context import resolve_user


class DataPusherGraphQLView(GraphQLView[StrawberryDjangoContext, None]):
    """GraphQL over HTTP, authenticated by bearer token only (see schema/context.py)."""

    def get_context(self, request: HttpRequest, response: HttpResponse) -> StrawberryDjangoContext:
        raw = token_from_header(request.headers.get("Authorization"))
        request.user = resolve_user(raw)
        request.auth_token = raw  # type: ignore[attr-defined]
        return StrawberryDjangoContext(request=request, response=response)

"""GraphQL over HTTP. Errors outside an execution (a body that is not JSON, an unsupported
content type, credentials in the URL) answer in GraphQL's JSON shape, `{"errors": [{"message",
"extensions": {"code"}}]}`, never as text or HTML; see project/middleware.py for the rest."""

import json
from typing import Any

from cross_web import HTTPException
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from strawberry.django.context import StrawberryDjangoContext
from strawberry.django.views import GraphQLView

from identity.auth import token_from_header
from project.body_guard import graphql_answer
from schema.context import resolve_user

# Query parameters that carry credentials in the habits of other APIs; all refused.
CREDENTIAL_PARAMETERS = frozenset(
    {"token", "authtoken", "auth_token", "access_token", "accesstoken", "apikey", "api_key"}
)
_CODES = {405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def _json_error(status: int, code: str, message: str) -> JsonResponse:
    return graphql_answer(status, code, message).django_response()


class DataPusherGraphQLView(GraphQLView[StrawberryDjangoContext, None]):
    """GraphQL over HTTP, authenticated by bearer token only (see schema/context.py)."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if any(name.lower() in CREDENTIAL_PARAMETERS for name in request.GET):
            return _json_error(
                400, "token_in_url", "Send credentials in headers, never in the URL."
            )
        try:
            return self.run(request=request)
        except HTTPException as e:
            return _json_error(e.status_code, _CODES.get(e.status_code, "bad_request"), e.reason)

    def decode_json(self, data: str | bytes) -> object:
        # Deep nesting makes the decoder recurse past Python's limit (RecursionError), which
        # strawberry does not catch: answer it like any other undecodable body.
        try:
            return json.loads(data)
        except (RecursionError, ValueError) as e:
            raise json.JSONDecodeError("Undecodable JSON", "", 0) from e

    def get_context(self, request: HttpRequest, response: HttpResponse) -> StrawberryDjangoContext:
        raw = token_from_header(request.headers.get("Authorization"))
        request.user = resolve_user(raw)
        request.auth_token = raw  # type: ignore[attr-defined]
        return StrawberryDjangoContext(request=request, response=response)

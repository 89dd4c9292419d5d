"""Errors of the API paths in their documented JSON shapes, never Django's HTML pages.

`/server/incoming_data/` answers `{"success": false, "code", "message"}`; `/graphql/` answers
GraphQL's `{"errors": [{"message", "extensions": {"code"}}]}`. A database that cannot be reached
(OperationalError, InterfaceError) is `503 unavailable` with Retry-After; a body over Django's
upload limit `413 payload_too_large`; a malformed request `400 bad_request`; anything else is
logged with its traceback and answered `500 internal_error` ("Unexpected error.").
`JsonErrorsMiddleware` handles what a view raises; `server_error` (handler500) what escapes
elsewhere. Other paths (the admin) keep Django's pages."""

import logging
import sys
from collections.abc import Callable

from django.core.exceptions import BadRequest, RequestDataTooBig, SuspiciousOperation
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

from project.body_guard import GRAPHQL_PATH, Answer, graphql_answer, too_large

logger = logging.getLogger("datapusher.errors")

RETRY_AFTER_SECONDS = "5"


def _api(request: HttpRequest) -> str | None:
    """'incoming' or 'graphql' for the API paths, else None."""
    from django.urls import reverse

    if request.path_info == reverse("incoming_data"):
        return "incoming"
    if request.path_info == GRAPHQL_PATH:
        return "graphql"
    return None


def _answer(api: str, status: int, code: str, message: str, **headers: str) -> Answer:
    if api == "graphql":
        return graphql_answer(status, code, message, **headers)
    return Answer(
        status,
        {"success": False, "code": code, "message": message},
        tuple((name.replace("_", "-"), value) for name, value in headers.items()),
    )


def error_response(request: HttpRequest, exception: BaseException) -> JsonResponse | None:
    """The JSON answer to `exception` on an API path (None elsewhere)."""
    api = _api(request)
    if api is None:
        return None
    if isinstance(exception, OperationalError | InterfaceError):
        logger.error("Database unavailable on %s", request.path_info, exc_info=exception)
        answer = _answer(
            api,
            503,
            "unavailable",
            "Temporarily unavailable; retry.",
            Retry_After=RETRY_AFTER_SECONDS,
        )
    elif isinstance(exception, RequestDataTooBig):
        answer = too_large(request.path_info)
    elif isinstance(exception, BadRequest | SuspiciousOperation):
        answer = _answer(api, 400, "bad_request", "Bad request.")
    else:
        logger.error("Unexpected error on %s", request.path_info, exc_info=exception)
        answer = _answer(api, 500, "internal_error", "Unexpected error.")
    return answer.django_response()


class JsonErrorsMiddleware:
    """Turns what a view of an API path raises into its JSON error (last in MIDDLEWARE, so
    that it sees the view's exception first)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        return error_response(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: JSON on the API paths, Django's page elsewhere."""
    exception = sys.exc_info()[1]
    response = error_response(request, exception or RuntimeError("unknown error"))
    return response if response is not None else defaults.server_error(request)

"""POST /server/incoming_data/: the REST entry point for external systems.

Checks, in order: no query string (400 `token_in_url`), method (405), size (413), content type
(415), event id (400), token (401), rate limit (429), JSON object body (400); then one service
call. Every error has the same shape, `{"success": false, "code": ..., "message": ...}`, and no
error path writes anything. The checks that need only the request line and headers are in
`header_refusal`, which the ASGI and daphne guards (project/body_guard.py) run too, before any
body is read; the body is read up to INCOMING_MAX_BODY_BYTES + 1 bytes, never further."""

import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from redis.exceptions import RedisError

from delivery import ingest, tasks
from delivery.errors import DeliveryErrorCode as Code
from delivery.models import UNSTORABLE_TEXT
from identity.selectors import account_id_for_app_secret
from project.db import Contended

logger = logging.getLogger(__name__)

MAX_EVENT_ID_LENGTH = 255
# Deeper payloads are refused: storing and re-encoding them recurses once per level.
MAX_PAYLOAD_DEPTH = 100
# Where they can come from in a UTF-8 body: an escaped NUL or surrogate (paired ones too, the
# walk tells them apart) or a surrogate encoded as UTF-8 (which json.loads lets through).
_RISKY_TEXT = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])|\xed[\xa0-\xbf]")
RETRY_AFTER_UNAVAILABLE = "5"


@dataclass(frozen=True)
class Refusal:
    """An error answer of incoming_data: status, the JSON body, extra headers."""

    status: int
    code: Code
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"success": False, "code": self.code.value, "message": self.message}

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body(), status=self.status)
        for name, value in self.headers.items():
            response[name] = value
        return response


UNAUTHENTICATED = Refusal(401, Code.UNAUTHENTICATED, "Missing or invalid CL-X-TOKEN.")
UNAVAILABLE = Refusal(
    503,
    Code.UNAVAILABLE,
    "Temporarily unavailable; retry.",
    {"Retry-After": RETRY_AFTER_UNAVAILABLE},
)
INTERNAL_ERROR = Refusal(500, Code.INTERNAL_ERROR, "Unexpected error.")


def too_large() -> Refusal:
    return Refusal(
        413, Code.PAYLOAD_TOO_LARGE, f"Body larger than {settings.INCOMING_MAX_BODY_BYTES} bytes."
    )


class _BadEventId(ValueError):
    pass


def _event_id(raw: str | None) -> str | None:
    """The CL-X-EVENT-ID header as the sender wrote it. Servers hand header values over
    decoded as Latin-1 (WSGI, ASGI): the bytes are taken back and decoded as UTF-8.
    Raises _BadEventId with the message to answer."""
    if raw is None:
        return None
    try:
        event_id = raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise _BadEventId("CL-X-EVENT-ID must be UTF-8 text.") from None
    if not 0 < len(event_id) <= MAX_EVENT_ID_LENGTH:
        raise _BadEventId(f"CL-X-EVENT-ID must be 1 to {MAX_EVENT_ID_LENGTH} characters.")
    if "\x00" in event_id:
        raise _BadEventId("CL-X-EVENT-ID must not contain NUL.")
    return event_id


def header_refusal(*, method: str, query_string: str, headers: Mapping[str, str]) -> Refusal | None:
    """The refusal the request line and headers alone call for, or None. `headers` maps
    lower-case names to values as the server decoded them (Latin-1). Reads no body and no
    database, so that it can run in a server's event loop before the body arrives."""
    if query_string:
        # Whatever is in it: URLs end up in access logs, proxies and browser histories.
        return Refusal(400, Code.TOKEN_IN_URL, "Send credentials in headers, never in the URL.")
    if method != "POST":
        return Refusal(405, Code.METHOD_NOT_ALLOWED, "Use POST.", {"Allow": "POST"})
    try:
        length = int(headers.get("content-length") or 0)
    except ValueError:
        length = 0
    if length > settings.INCOMING_MAX_BODY_BYTES:
        return too_large()
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        return Refusal(415, Code.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json.")
    try:
        _event_id(headers.get("cl-x-event-id"))
    except _BadEventId as e:
        return Refusal(400, Code.INVALID_EVENT_ID, str(e))
    if not headers.get("cl-x-token"):
        return UNAUTHENTICATED
    return None


def _rate_limited(account_id: object) -> bool:
    """Fixed one-second window per account, counted in the shared cache."""
    limit = settings.INCOMING_RATE_LIMIT
    if not limit:
        return False
    key = f"rate:{account_id}:{int(time.time())}"
    cache.add(key, 0, timeout=2)
    try:
        count = cache.incr(key)
    except ValueError:  # the key expired between add and incr
        cache.set(key, 1, timeout=2)
        count = 1
    return bool(count > limit)


@csrf_exempt
def incoming_data(request: HttpRequest) -> JsonResponse:
    try:
        return _incoming(request)
    except RedisError:
        logger.exception("Redis unavailable on incoming_data")
    except (OperationalError, InterfaceError):
        logger.exception("Database unavailable on incoming_data")
    return UNAVAILABLE.response()


def _incoming(request: HttpRequest) -> JsonResponse:
    # request.headers, not request.POST: nothing on this path may parse the body as a form.
    headers = {name.lower(): value for name, value in request.headers.items()}
    refusal = header_refusal(
        method=request.method or "",
        query_string=request.META.get("QUERY_STRING", ""),
        headers=headers,
    )
    if refusal is not None:
        return refusal.response()
    event_id = _event_id(headers.get("cl-x-event-id"))
    account_id = account_id_for_app_secret(headers.get("cl-x-token", ""))
    if account_id is None:
        return UNAUTHENTICATED.response()
    if _rate_limited(account_id):
        return Refusal(
            429, Code.RATE_LIMITED, "Rate limit exceeded.", {"Retry-After": "1"}
        ).response()
    # Bounded, and past Django's DATA_UPLOAD_MAX_MEMORY_SIZE (request.body would apply it):
    # a body without Content-Length (chunked) is read one byte past our limit at most.
    body = request.read(settings.INCOMING_MAX_BODY_BYTES + 1)
    if len(body) > settings.INCOMING_MAX_BODY_BYTES:
        return too_large().response()
    payload = _parse(body)
    if payload is None:
        return Refusal(400, Code.INVALID_DATA, "Invalid Data").response()
    try:
        result = tasks.event_accept(
            account_id=account_id, event_id=event_id, payload=payload, size=len(body), body=body
        )
    except ingest.AccountGone:  # deleted while we were checking the token
        return UNAUTHENTICATED.response()
    except Contended:
        return UNAVAILABLE.response()
    return JsonResponse(
        {
            "success": True,
            "message": "Data Received",
            "event_id": result.event_id,
            "deliveries": result.deliveries,
            "duplicate": result.duplicate,
        },
        status=202,
    )


def _parse(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object that can be stored and sent on, or None."""
    try:
        payload = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(payload, dict):
        return None
    # The walk is only needed when the raw bytes say the payload could be unstorable.
    risky_text = bool(_RISKY_TEXT.search(body)) or json.detect_encoding(body) != "utf-8"
    may_be_deep = body.count(b"[") + body.count(b"{") > MAX_PAYLOAD_DEPTH
    if (risky_text or may_be_deep) and _unstorable(payload, text=risky_text):
        return None
    return payload


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity, -Infinity


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400
        raise ValueError(f"{text} overflows")
    return value


def _unstorable(payload: dict[str, Any], *, text: bool) -> bool:
    """Whether containers nest more than MAX_PAYLOAD_DEPTH levels (storing and re-encoding
    recurse once per level) or, with `text`, a key or string holds NUL or an unpaired surrogate
    (PostgreSQL refuses both, UTF-8 cannot encode the latter). One level at a time."""
    level: list[Any] = [payload]
    for _ in range(MAX_PAYLOAD_DEPTH):
        values: list[Any] = []
        for container in level:
            if type(container) is dict:
                if text and any(map(UNSTORABLE_TEXT.search, container)):
                    return True
                values.extend(container.values())
            else:
                values.extend(container)
        if text and any(map(UNSTORABLE_TEXT.search, [v for v in values if type(v) is str])):
            return True
        level = [v for v in values if type(v) is dict or type(v) is list]
        if not level:
            return False
    return True  # containers below level MAX_PAYLOAD_DEPTH

"""POST /server/incoming_data/: the REST entry point for external systems.

Checks, in order: method (405), size (413), content type (415), event id (400), token (401),
rate limit (429), JSON object body (400); then one service call. Every error has the same shape,
`{"success": false, "code": ..., "message": ...}`, and no error path writes anything."""

import json
import logging
import math
import re
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from redis.exceptions import RedisError

from delivery import services
from delivery.errors import DeliveryErrorCode as Code
from identity.selectors import account_id_for_app_secret

logger = logging.getLogger(__name__)

MAX_EVENT_ID_LENGTH = 255
# Deeper payloads are refused: storing and re-encoding them recurses once per level.
MAX_PAYLOAD_DEPTH = 100
# What no database column or UTF-8 request can carry: NUL and unpaired surrogates.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Where they can come from in a UTF-8 body: an escaped NUL or surrogate (paired ones too, the
# walk tells them apart) or a surrogate encoded as UTF-8 (which json.loads lets through).
_RISKY_TEXT = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])|\xed[\xa0-\xbf]")


def _error(status: int, code: Code, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse(
        {"success": False, "code": code.value, "message": message}, status=status
    )
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


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
    if request.method != "POST":
        return _error(405, Code.METHOD_NOT_ALLOWED, "Use POST.", Allow="POST")
    try:
        length = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        length = 0
    if length > settings.INCOMING_MAX_BODY_BYTES:
        return _too_large()
    content_type = request.content_type or ""
    if content_type.lower() != "application/json":
        return _error(415, Code.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json.")
    event_id = request.headers.get("CL-X-EVENT-ID")
    if event_id is not None and not (0 < len(event_id) <= MAX_EVENT_ID_LENGTH):
        return _error(
            400,
            Code.INVALID_EVENT_ID,
            f"CL-X-EVENT-ID must be 1 to {MAX_EVENT_ID_LENGTH} characters.",
        )
    if event_id is not None and "\x00" in event_id:
        return _error(400, Code.INVALID_EVENT_ID, "CL-X-EVENT-ID must not contain NUL.")
    try:
        account_id = account_id_for_app_secret(request.headers.get("CL-X-TOKEN", ""))
        if account_id is None:
            return _error(401, Code.UNAUTHENTICATED, "Missing or invalid CL-X-TOKEN.")
        if _rate_limited(account_id):
            return _error(429, Code.RATE_LIMITED, "Rate limit exceeded.", Retry_After="1")
    except RedisError:
        logger.exception("Redis unavailable on incoming_data")
        return _unavailable()
    body = request.body
    if len(body) > settings.INCOMING_MAX_BODY_BYTES:  # no or false Content-Length
        return _too_large()
    payload = _parse(body)
    if payload is None:
        return _error(400, Code.INVALID_DATA, "Invalid Data")
    result = services.event_ingest(
        account_id=account_id, event_id=event_id, payload=payload, size=len(body)
    )
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
                if text and any(map(_UNSTORABLE.search, container)):
                    return True
                values.extend(container.values())
            else:
                values.extend(container)
        if text and any(map(_UNSTORABLE.search, [v for v in values if type(v) is str])):
            return True
        level = [v for v in values if type(v) is dict or type(v) is list]
        if not level:
            return False
    return True  # containers below level MAX_PAYLOAD_DEPTH


def _too_large() -> JsonResponse:
    return _error(
        413,
        Code.PAYLOAD_TOO_LARGE,
        f"Body larger than {settings.INCOMING_MAX_BODY_BYTES} bytes.",
    )


def _unavailable() -> JsonResponse:
    return _error(503, Code.UNAVAILABLE, "Temporarily unavailable; retry.", Retry_After="5")

"""POST /server/incoming_data/: the REST entry point for external systems.

Checks, in order: method (405), size (413), content type (415), token (401), rate limit
(429), JSON object body (400); then one service call. Every error has the same shape,
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
    try:
        payload = json.loads(body, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return payload if isinstance(payload, dict) and _storable(payload) else None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity, -Infinity


def _storable(payload: dict[str, Any]) -> bool:
    """Whether the payload can be stored and sent on as JSON: at most MAX_PAYLOAD_DEPTH levels,
    finite numbers (1e400 parses as infinity), and strings without NUL or unpaired surrogates
    (PostgreSQL refuses both; UTF-8 cannot encode the latter)."""
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > MAX_PAYLOAD_DEPTH or any(_UNSTORABLE.search(key) for key in value):
                return False
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            if depth > MAX_PAYLOAD_DEPTH:
                return False
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            if _UNSTORABLE.search(value):
                return False
        elif isinstance(value, float) and not math.isfinite(value):
            return False
    return True


def _too_large() -> JsonResponse:
    return _error(
        413,
        Code.PAYLOAD_TOO_LARGE,
        f"Body larger than {settings.INCOMING_MAX_BODY_BYTES} bytes.",
    )


def _unavailable() -> JsonResponse:
    return _error(503, Code.UNAVAILABLE, "Temporarily unavailable; retry.", Retry_After="5")

"""Destination input, checked before any transaction opens (the URL check resolves DNS).

Each function returns the cleaned value or raises ValidationError with a stable code
(`invalid_url`, `invalid_method`, `invalid_headers`) on the GraphQL field name."""

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator

from delivery import transport
from delivery.errors import DeliveryErrorCode
from delivery.models import HttpMethod
from identity.errors import invalid

MAX_HEADERS = 50
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# RFC 9110 §5.5 field-value without obs-text: visible ASCII, with spaces and tabs only between
# visible characters (or empty). Bytes above 0x7F are read differently by different receivers,
# and http.client cannot encode anything beyond Latin-1 at all.
_HEADER_VALUE = re.compile(r"^(?:[\x21-\x7e](?:[\x20\x21-\x7e\t]*[\x21-\x7e])?)?\Z")
RESERVED_HEADERS = frozenset(
    {
        # hop-by-hop (RFC 9110 §7.6.1) and framing
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        # set by Data Pusher on every request
        "content-type",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)


def clean_url(url: str) -> str:
    """The URL as given (stripped), if Django's URLValidator accepts it and the HTTP client
    reads the same host and port from it as the standard library (transport.parse_url: no
    backslash, no `user:password@`). Raises `invalid_url`."""
    url = url.strip()
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise invalid(
            DeliveryErrorCode.INVALID_URL, "Enter a valid http(s) URL.", field="url"
        ) from None
    if len(url) > 2000:
        raise invalid(DeliveryErrorCode.INVALID_URL, "At most 2000 characters.", field="url")
    try:
        target = transport.parse_url(url)
    except transport.InvalidURL as error:
        raise invalid(DeliveryErrorCode.INVALID_URL, str(error), field="url") from None
    if not settings.DELIVERY_ALLOW_PRIVATE_NETWORKS and not public_host(target):
        raise invalid(
            DeliveryErrorCode.INVALID_URL,
            "Private, loopback and link-local destinations are not allowed.",
            field="url",
        )
    return url


def public_host(target: transport.Target) -> bool:
    """False when the target's host is, or resolves to, a non-public address (any of its DNS
    answers). A name that does not resolve now is let through: every delivery checks again,
    with the same host and port (the HTTP client's reading of the URL)."""
    name = target.host.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):  # whatever the resolver says
        return False
    try:
        transport.check_host(target.host, target.port)
    except transport.BlockedAddress:
        return False
    except OSError:  # does not resolve (requests.ConnectionError)
        return True
    return True


def clean_method(method: str) -> str:
    if method not in HttpMethod.values:
        raise invalid(
            DeliveryErrorCode.INVALID_METHOD,
            f"Use one of {', '.join(HttpMethod.values)}.",
            field="httpMethod",
        )
    return method


def clean_headers(headers: Any) -> dict[str, str]:
    def bad(message: str) -> ValidationError:
        return invalid(DeliveryErrorCode.INVALID_HEADERS, message, field="headers")

    if not isinstance(headers, dict):
        raise bad("Headers must be a JSON object of strings.")
    if len(headers) > MAX_HEADERS:
        raise bad(f"At most {MAX_HEADERS} headers.")
    seen: set[str] = set()
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise bad(f"Invalid header name: {name!r}.")
        if not isinstance(value, str) or "\r" in value or "\n" in value or len(value) > 4096:
            raise bad(f"Header {name} must be a single-line string of at most 4096 characters.")
        if not _HEADER_VALUE.match(value):
            raise bad(
                f"Header {name} may hold only visible ASCII characters, with spaces or tabs "
                "between them."
            )
        lower = name.lower()
        if lower in RESERVED_HEADERS:
            raise bad(f"Header {name} is set by Data Pusher or is hop-by-hop; it cannot be set.")
        if lower in seen:
            raise bad(f"Header {name} is given twice.")
        seen.add(lower)
    return dict(headers)


MAX_IN_FLIGHT = 100
MAX_RATE_LIMIT = 10_000


def _limit(value: int, top: int, code: DeliveryErrorCode, field: str, unit: str = "") -> int | None:
    """A per-destination limit: 1 to `top`, or 0 for the server's default, stored as None."""
    if not 0 <= value <= top:
        raise invalid(code, f"Use 1 to {top}{unit}, or 0 for the default.", field=field)
    return value or None


def clean_max_in_flight(value: int, field: str = "maxInFlight") -> int | None:
    """A destination's (or an account's default) concurrent-request limit (0: the default)."""
    return _limit(value, MAX_IN_FLIGHT, DeliveryErrorCode.INVALID_MAX_IN_FLIGHT, field)


def clean_rate_limit(value: int, field: str = "rateLimit") -> int | None:
    """A destination's (or an account's default) requests per second (0: the default)."""
    return _limit(
        value, MAX_RATE_LIMIT, DeliveryErrorCode.INVALID_RATE_LIMIT, field, " requests per second"
    )

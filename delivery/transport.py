"""The only module that speaks HTTP to destinations.

`send()` never raises for a delivery problem: it returns an `Outcome` whose `kind` says whether
the try succeeded, may be retried, or failed for good. Standard Webhooks headers are added here.

Outbound safety: http(s) only, explicit timeouts, no redirects, the response body read only up
to a cap, and (unless DELIVERY_ALLOW_PRIVATE_NETWORKS) no private, loopback, link-local,
multicast or reserved address: checked after DNS resolution, and again on the connected socket
so a DNS answer that changes between check and connect (rebinding) is caught too.

URLs are read one way everywhere: `parse_url()` reads a URL as requests/urllib3 will send it,
and both the destination check (validators) and `send()` use the host and port it returns. A
URL that the standard library (urlsplit, Django's URLValidator) reads differently, or that has
a backslash or a `user:password@` part, is refused (`InvalidURL`).
"""

import base64
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import requests
import urllib3.util
from django.conf import settings
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

logger = logging.getLogger(__name__)

USER_AGENT = "DataPusher/1.0 (+webhooks)"
SECRET_PREFIX = "whsec_"


class Kind(StrEnum):
    SUCCESS = "success"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass
class Outcome:
    kind: Kind
    duration_ms: int
    status_code: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    error_class: str = ""
    error_message: str = ""
    retry_after: float | None = None

    @classmethod
    def failure(cls, kind: Kind, duration_ms: int, error: BaseException) -> "Outcome":
        """A try that got no answer: `error`'s class name and (cut) message."""
        return cls(
            kind, duration_ms, error_class=type(error).__name__, error_message=str(error)[:1000]
        )


class BlockedAddress(OSError):
    """The destination resolves to an address deliveries may not reach."""


class InvalidURL(ValueError):
    """A URL deliveries will not use: not http(s), no host, or one that parsers read apart."""


@dataclass(frozen=True)
class Target:
    """Where a URL sends a request, as the HTTP client reads it."""

    url: str  # as requests sends it (PreparedRequest.prepare_url: IDNA host, requoted)
    scheme: str
    host: str  # as urllib3 resolves it: lower case, IDNA, no IPv6 brackets, trailing dot kept
    port: int  # the explicit port or the scheme's default


_DEFAULT_PORTS = {"http": 80, "https": 443}
BACKSLASH_MESSAGE = "A backslash is not allowed in a URL."
USERINFO_MESSAGE = "user:password@ is not allowed in a URL; send credentials in a header."
AMBIGUOUS_MESSAGE = "The host or port of this URL reads differently to different parsers."


@functools.lru_cache(maxsize=4096)
def parse_url(url: str) -> Target:
    """Read `url` exactly as the HTTP client will: prepared by requests, whose adapter then
    connects to `urlsplit(prepared).hostname`, the host urllib3 produced.

    Raises InvalidURL when it is not http(s) with a host, when it contains a backslash
    (WHATWG parsers read it as "/", urllib3 ends the host there, urlsplit does not) or a
    userinfo part (`user:pass@`; credentials belong in a header), or when urlsplit's reading
    of the URL as written names another host or port than the client's."""
    if "\\" in url:
        raise InvalidURL(BACKSLASH_MESSAGE)
    prepared = requests.PreparedRequest()
    try:
        prepared.prepare_url(url, None)
        assert prepared.url is not None
        wire = urllib3.util.parse_url(prepared.url)
        sent = urlsplit(prepared.url)
        written = urlsplit(url)
        ports = (written.port, sent.port)
    except (requests.RequestException, ValueError) as error:  # UnicodeError is a ValueError
        raise InvalidURL(f"Not a valid URL: {error}") from None
    scheme = (sent.scheme or "").lower()
    if scheme not in _DEFAULT_PORTS or not sent.hostname or not wire.host:
        raise InvalidURL("Not an http(s) URL with a host.")
    if wire.auth is not None or "@" in written.netloc or "@" in sent.netloc:
        raise InvalidURL(USERINFO_MESSAGE)
    host = sent.hostname
    default = _DEFAULT_PORTS[scheme]
    try:
        written_host = (written.hostname or "").encode("idna").decode("ascii")
    except UnicodeError:
        written_host = ""
    hosts = {host, wire.host.strip("[]").lower(), written_host.lower()}
    port = default if ports[1] is None else ports[1]
    other_ports = {p for p in (*ports, wire.port) if p is not None and p != port}
    if hosts != {host} or other_ports or (ports[0] is None) != (ports[1] is None):
        raise InvalidURL(AMBIGUOUS_MESSAGE)
    return Target(prepared.url, scheme, host, port)


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4 carried inside IPv6 (::ffff:a.b.c.d, 6to4 2002:a.b.c.d::) is judged as IPv4.
        embedded = ip.ipv4_mapped if ip.ipv4_mapped is not None else ip.sixtofour
        ip = embedded if embedded is not None else ip
    return not (
        # not is_global: also the shared address space 100.64.0.0/10, which is neither
        # private nor global (cloud metadata services live there, e.g. 100.100.100.200).
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def check_host(host: str, port: int) -> None:
    """Raise BlockedAddress unless every address `host` resolves to is public; a name that
    does not resolve raises requests.ConnectionError (transient, like any connection error)."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        raise requests.ConnectionError(f"Cannot resolve {host}: {error.strerror}") from None
    for info in infos:
        address = str(info[4][0])
        if not is_public_address(address):
            raise BlockedAddress(
                f"{host} resolves to {address}, a private/loopback/link-local address; "
                "deliveries there are refused (DELIVERY_ALLOW_PRIVATE_NETWORKS is off)."
            )


class _GuardedConnectionMixin:
    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        peer = sock.getpeername()[0]
        if not is_public_address(peer):
            sock.close()
            raise BlockedAddress(f"Connected to {peer}, a non-public address; refused.")
        return sock


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPPool,
            "https": _GuardedHTTPSPool,
        }


_local = threading.local()

# What requests.Session would add to every request (Accept-Encoding, Accept, Connection).
_DEFAULT_HEADERS = requests.utils.default_headers()


def _adapter() -> HTTPAdapter:
    """One keep-alive connection pool per thread. Requests go straight to the adapter, not
    through a requests.Session: the session's per-request merging of settings, cookies and
    hooks cost more CPU than the rest of a delivery, and deliveries use none of them."""
    allow_private = settings.DELIVERY_ALLOW_PRIVATE_NETWORKS
    adapter: HTTPAdapter | None = getattr(_local, "adapter", None)
    if adapter is None or getattr(_local, "allow_private", None) != allow_private:
        adapter = HTTPAdapter() if allow_private else _GuardedAdapter()
        _local.adapter, _local.allow_private = adapter, allow_private
    return adapter


def _prepared(
    method: str, url: str, headers: dict[str, str], data: bytes | None
) -> requests.PreparedRequest:
    """The request as requests.Session would prepare it, for a URL `parse_url` prepared
    already (so the query string signed is the one sent) and headers of our own making plus
    the destination's (checked the way requests checks them)."""
    prepared = requests.PreparedRequest()
    prepared.method = method
    prepared.url = url
    prepared.headers = CaseInsensitiveDict(_DEFAULT_HEADERS)
    for header in headers.items():
        requests.utils.check_header_validity(header)
    prepared.headers.update(headers)
    if data is not None:
        prepared.headers["Content-Length"] = str(len(data))
    prepared.body = data
    return prepared


def new_signing_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    """Standard Webhooks signature: `v1,` + base64(HMAC-SHA256(key, "id.timestamp.body"))."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def query_string(payload: dict[str, Any]) -> str:
    """A JSON object as query parameters: strings as they are, other values as JSON."""
    return urlencode(
        [
            (key, value if isinstance(value, str) else json.dumps(value, separators=(",", ":")))
            for key, value in payload.items()
        ]
    )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def classify(status: int) -> Kind:
    if 200 <= status < 300:
        return Kind.SUCCESS
    if status in (408, 429) or status >= 500:
        return Kind.TRANSIENT
    return Kind.PERMANENT  # 3xx (redirects are not followed) and other 4xx


def _read_capped(response: requests.Response, limit: int) -> str:
    data = response.raw.read(limit + 1, decode_content=True) or b""
    if len(data) > limit:
        response.close()  # do not drain an oversized body; drop the connection instead
        data = data[:limit]
    else:
        response.raw.read(decode_content=False)  # drain so the connection is reused
    return data.decode("utf-8", errors="replace")


def send(
    *,
    url: str,
    method: str,
    headers: dict[str, str],
    payload: dict[str, Any],
    webhook_id: str,
    secret: str,
    body: str = "",
) -> Outcome:
    """Deliver an event once. `body` is the JSON text received ("" when it was not kept: then
    `payload` is sent as compact JSON). POST/PUT/PATCH/DELETE send exactly `body` (UTF-8),
    signed over exactly those bytes; GET sends the payload as query parameters, keys in the
    order received, signed over exactly the query string sent.

    Never raises: an error while building the request that will not go away by itself (a URL
    parsers read apart, a header value HTTP cannot encode) is a permanent failure; any other
    exception is transient, with its class name as `error_class`."""
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    def failed(kind: Kind, error: BaseException) -> Outcome:
        return Outcome.failure(kind, elapsed(), error)

    try:
        target = parse_url(url)
    except InvalidURL as error:
        return failed(Kind.PERMANENT, error)
    try:
        timestamp = int(time.time())
        parts = urlsplit(target.url)
        data: bytes | None
        if method == "GET":
            # What is signed is the whole query string the receiver gets: the URL's own
            # parameters (as requests prepared them), then the payload's; the URL is sent as
            # built here (tests/delivery/test_wire.py checks the raw query string at the
            # receiver).
            ordered = json.loads(body) if body else payload  # jsonb does not keep key order
            signed = "&".join(q for q in (parts.query, query_string(ordered)) if q)
            data = None
            request_url = urlunsplit(parts._replace(query=signed))
        else:
            signed = body or json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
            data = signed.encode()
            request_url = target.url
        request_headers = {
            **headers,
            "User-Agent": USER_AGENT,
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, webhook_id, timestamp, signed),
        }
        if data is not None:
            request_headers["Content-Type"] = "application/json"
        if not settings.DELIVERY_ALLOW_PRIVATE_NETWORKS:
            check_host(target.host, target.port)
        response = _adapter().send(
            _prepared(method, request_url, request_headers, data),
            stream=True,
            timeout=(settings.DELIVERY_CONNECT_TIMEOUT, settings.DELIVERY_READ_TIMEOUT),
        )
        try:
            text = _read_capped(response, settings.DELIVERY_RESPONSE_BODY_LIMIT)
        finally:
            response.close()
    except BlockedAddress as error:
        return failed(Kind.PERMANENT, error)
    except requests.RequestException as error:
        blocked = _blocked_cause(error)
        if blocked is not None:
            return failed(Kind.PERMANENT, blocked)
        if isinstance(error, ValueError):  # InvalidHeader, InvalidURL: the same every time
            return failed(Kind.PERMANENT, error)
        return failed(Kind.TRANSIENT, error)
    except ValueError as error:
        # UnicodeEncodeError of a header value http.client cannot encode (stored before
        # values were validated), a malformed signing secret: deterministic.
        return failed(Kind.PERMANENT, error)
    except Exception as error:  # e.g. urllib3's own errors while reading the body
        logger.warning("Unexpected %s while sending to %s", type(error).__name__, target.host)
        return failed(Kind.TRANSIENT, error)
    kind = classify(response.status_code)
    return Outcome(
        kind,
        elapsed(),
        status_code=response.status_code,
        headers=dict(response.headers),
        body=text,
        error_class="" if kind is Kind.SUCCESS else "HTTPStatus",
        error_message=_status_message(response),
        retry_after=_retry_after(response.headers.get("Retry-After"))
        if response.status_code in (429, 503)
        else None,
    )


def _status_message(response: requests.Response) -> str:
    status = response.status_code
    if 200 <= status < 300:
        return ""
    if 300 <= status < 400:
        location = response.headers.get("Location", "")
        return f"HTTP {status}: redirects are not followed (Location: {location[:200]})"
    return f"HTTP {status} {response.reason or ''}".strip()


def _blocked_cause(error: BaseException) -> BlockedAddress | None:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BlockedAddress):
            return current
        for arg in getattr(current, "args", ()):
            if isinstance(arg, BaseException):
                found = _blocked_cause(arg)
                if found:
                    return found
        current = current.__cause__ or current.__context__
    return None

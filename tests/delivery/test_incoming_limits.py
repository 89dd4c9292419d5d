"""incoming_data refuses on headers before it reads a body, and reads a body only up to
INCOMING_MAX_BODY_BYTES + 1 bytes, through every entry point: Django's WSGI handler (the test
client), the ASGI application (`project.asgi`), and daphne (tests/delivery/test_incoming_server.py).
Credentials are accepted in headers only: a query string is refused with `token_in_url`."""

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.http import HttpRequest
from django.test import Client, override_settings

from delivery.models import DeliveryLog, Event
from tests.delivery import test_incoming_errors as errors
from tests.delivery.conftest import INCOMING
from tests.delivery.test_incoming_errors import VALID, error

# The fixtures of the refusal tests: two destinations, and the "nothing written" check.
destinations = errors.destinations
nothing_written = errors.nothing_written

MIB = 1024 * 1024
CHUNK = 64 * 1024
TOKEN_IN_URL = error("token_in_url", "Send credentials in headers, never in the URL.")


@pytest.fixture
def no_form_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything parses the body as a form (request.POST / request.FILES)."""

    def refuse(self: HttpRequest) -> None:
        raise AssertionError("request.POST was accessed on incoming_data")

    monkeypatch.setattr(HttpRequest, "_load_post_and_files", refuse)


@pytest.mark.parametrize("query", ["token=dpk_x", "authToken=dpk_x", "CL-X-TOKEN=dpk_x", "a=1"])
def test_a_query_string_is_refused_as_token_in_url(
    app_secret: str, nothing_written: Any, query: str
) -> None:
    with nothing_written():
        response = Client().post(
            f"{INCOMING}?{query}",
            VALID,
            content_type="application/json",
            headers={"CL-X-TOKEN": app_secret},
        )
    assert response.status_code == 400
    assert response.json() == TOKEN_IN_URL


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data; boundary=xyz",
        "application/x-www-form-urlencoded",
        "application/json-patch+json",
    ],
)
def test_form_bodies_are_refused_without_being_parsed(
    app_secret: str, nothing_written: Any, no_form_parsing: None, content_type: str
) -> None:
    body = b"--xyz\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--xyz--\r\n"
    with nothing_written():
        response = Client().post(
            INCOMING, body, content_type=content_type, headers={"CL-X-TOKEN": app_secret}
        )
    assert response.status_code == 415
    assert response.json() == error(
        "unsupported_media_type", "Content-Type must be application/json."
    )


@override_settings(INCOMING_MAX_BODY_BYTES=4 * MIB)
def test_a_body_above_djangos_upload_limit_but_within_ours_is_accepted(
    post_incoming: Any, app_secret: str
) -> None:
    body = json.dumps({"text": "x" * (3 * MIB)})
    response = post_incoming(body, token=app_secret)
    assert response.status_code == 202, response.content
    assert Event.objects.get().size == len(body)


# --- Through the ASGI application -----------------------------------------------------------


class AsgiResult:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.receives = 0  # body messages handed to the application

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode().lower(): v.decode() for k, v in self.messages[0]["headers"]}

    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.messages[1:]))


def asgi_post(
    chunks: Iterator[bytes],
    *,
    token: str | None = None,
    content_type: str = "application/json",
    content_length: int | None = None,
    path: str = INCOMING,
) -> AsgiResult:
    """POST through `project.asgi.application` with the body in `chunks` (a chunked upload when
    `content_length` is None); counts the body messages the application asked for."""
    from project.asgi import application

    headers = [(b"host", b"127.0.0.1"), (b"content-type", content_type.encode())]
    if token is not None:
        headers.append((b"cl-x-token", token.encode()))
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    result = AsgiResult()
    pending = iter(chunks)

    async def run() -> None:
        done = asyncio.Event()
        next_chunk = next(pending, None)

        async def receive() -> dict[str, Any]:
            nonlocal next_chunk
            if next_chunk is None:  # the body was sent: the client waits for the answer
                await done.wait()
                return {"type": "http.disconnect"}
            chunk, next_chunk = next_chunk, next(pending, None)
            result.receives += 1
            return {"type": "http.request", "body": chunk, "more_body": next_chunk is not None}

        async def send(message: dict[str, Any]) -> None:
            result.messages.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        await application(scope, receive, send)

    async_to_sync(run)()
    return result


def stream(total: int) -> Iterator[bytes]:
    """`total` bytes of a (never-ending) JSON string, in 64 KiB chunks."""
    yield b'{"text": "'
    for _ in range(total // CHUNK):
        yield b"x" * CHUNK


@override_settings(INCOMING_MAX_BODY_BYTES=MIB)
def test_asgi_content_length_over_the_limit_is_refused_before_the_body_is_read(
    app_secret: str, nothing_written: Any
) -> None:
    with nothing_written():
        result = asgi_post(stream(100 * MIB), token=app_secret, content_length=100 * MIB)
    assert (result.status, result.receives) == (413, 0)
    assert result.headers["content-type"] == "application/json"
    assert result.json() == error("payload_too_large", f"Body larger than {MIB} bytes.")


@override_settings(INCOMING_MAX_BODY_BYTES=MIB)
def test_asgi_chunked_body_over_the_limit_is_read_only_up_to_the_limit(
    app_secret: str, nothing_written: Any
) -> None:
    with nothing_written():
        result = asgi_post(stream(30 * MIB), token=app_secret)
    assert result.status == 413
    assert result.json() == error("payload_too_large", f"Body larger than {MIB} bytes.")
    assert result.receives == 1 + MIB // CHUNK  # the first chunk past the limit, no more


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=x", "text/plain"])
def test_asgi_wrong_content_type_is_refused_before_the_body_is_read(
    app_secret: str, nothing_written: Any, content_type: str
) -> None:
    with nothing_written():
        result = asgi_post(stream(30 * MIB), token=app_secret, content_type=content_type)
    assert (result.status, result.receives) == (415, 0)
    assert result.json() == error(
        "unsupported_media_type", "Content-Type must be application/json."
    )


def test_asgi_missing_token_is_refused_before_the_body_is_read(nothing_written: Any) -> None:
    with nothing_written():
        result = asgi_post(stream(30 * MIB))
    assert (result.status, result.receives) == (401, 0)
    assert result.json() == error("unauthenticated", "Missing or invalid CL-X-TOKEN.")


@pytest.mark.django_db(transaction=True)
@override_settings(INCOMING_MAX_BODY_BYTES=4 * MIB)
def test_asgi_chunked_body_above_djangos_upload_limit_but_within_ours_is_accepted(
    app_secret: str,
) -> None:
    body = json.dumps({"text": "x" * (3 * MIB)}).encode()
    chunks = (body[i : i + CHUNK] for i in range(0, len(body), CHUNK))
    result = asgi_post(chunks, token=app_secret)
    assert result.status == 202, result.messages
    assert Event.objects.get().size == len(body)
    assert DeliveryLog.objects.count() == 0

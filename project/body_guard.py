"""Refuse on headers, and bound what is read, before a request body reaches Django.

Django's ASGI handler reads a whole body into a temporary file before any view runs, and daphne
(Twisted) buffers the whole body before it even calls the ASGI application — and parses
urlencoded and multipart bodies in the reactor thread, which stalls every other request of the
process. Two guards, with the same rules (`early_answer`, `body_limit`):

* `BodyGuard`, ASGI middleware around Django's HTTP handler (project/asgi.py): answers on
  headers without reading the body, and reads at most the limit + 1 bytes before it hands the
  body to Django. It works under any ASGI server.
* `GuardedRequest`, daphne's request class (installed by `install_daphne_guard`, which
  project/asgi.py calls, so it holds for `daphne project.asgi:application` and for
  `manage.py serve`): answers as soon as the headers are in — an over-large Content-Length, a
  wrong content type or a missing token of incoming_data — and stops a body (chunked or not) at
  the limit + 1 bytes; it never parses form bodies. After such an answer the connection is
  half-closed: the client can read the answer while it is still sending, what it sends is
  discarded, and the connection is closed LINGER_SECONDS later.

Limits: incoming_data INCOMING_MAX_BODY_BYTES; every other path DATA_UPLOAD_MAX_MEMORY_SIZE
(Django would refuse more anyway, in HTML, after reading it all)."""

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from io import BytesIO
from typing import Any
from urllib.parse import unquote

from django.conf import settings
from django.http import JsonResponse
from django.urls import reverse

logger = logging.getLogger(__name__)

LINGER_SECONDS = 2.0
GRAPHQL_PATH = "/graphql/"

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class Answer:
    """A complete JSON response, independent of the framework that sends it."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()

    def encoded(self) -> bytes:
        return json.dumps(self.body).encode()

    def django_response(self) -> JsonResponse:
        response = JsonResponse(self.body, status=self.status)
        for name, value in self.headers:
            response[name] = value
        return response

    def header_list(self) -> list[tuple[bytes, bytes]]:
        body = self.encoded()
        return [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *((name.lower().encode(), value.encode()) for name, value in self.headers),
        ]


def graphql_answer(status: int, code: str, message: str, **headers: str) -> Answer:
    """An error of /graphql/ outside any execution, in GraphQL's response shape."""
    return Answer(
        status,
        {"errors": [{"message": message, "extensions": {"code": code}}]},
        tuple((name.replace("_", "-"), value) for name, value in headers.items()),
    )


def _incoming_path() -> str:
    return reverse("incoming_data")


def body_limit(path: str) -> int | None:
    """The most body bytes a request to `path` may carry (None: no limit)."""
    if path == _incoming_path():
        return int(settings.INCOMING_MAX_BODY_BYTES)
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return None if limit is None else int(limit)


def too_large(path: str) -> Answer:
    from delivery.views import too_large as incoming_too_large

    if path == _incoming_path():
        refusal = incoming_too_large()
        return Answer(refusal.status, refusal.body())
    limit = body_limit(path)
    message = f"Body larger than {limit} bytes."
    if path == GRAPHQL_PATH:
        return graphql_answer(413, "payload_too_large", message)
    return Answer(413, {"code": "payload_too_large", "message": message})


def early_answer(
    *, method: str, path: str, query_string: str, headers: Mapping[str, str]
) -> Answer | None:
    """What to answer from the request line and headers alone (None: read the body).
    `headers`: lower-case names, Latin-1-decoded values. Touches no database."""
    from delivery.views import header_refusal

    if path == _incoming_path():
        refusal = header_refusal(method=method, query_string=query_string, headers=headers)
        if refusal is None:
            return None
        return Answer(refusal.status, refusal.body(), tuple(refusal.headers.items()))
    limit = body_limit(path)
    try:
        length = int(headers.get("content-length") or 0)
    except ValueError:
        length = 0
    if limit is not None and length > limit:
        return too_large(path)
    return None


# --- ASGI ----------------------------------------------------------------------------------


async def _send_answer(send: Send, answer: Answer) -> None:
    await send(
        {"type": "http.response.start", "status": answer.status, "headers": answer.header_list()}
    )
    await send({"type": "http.response.body", "body": answer.encoded()})


class BodyGuard:
    """ASGI middleware: `early_answer` before any body message is read, then at most
    `body_limit` + 1 bytes read before Django sees the body (as one message)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers: dict[str, str] = {}
        for name, value in scope.get("headers", []):
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]},{text}" if key in headers else text
        answer = early_answer(
            method=scope["method"],
            path=path,
            query_string=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
        )
        if answer is not None:
            await _send_answer(send, answer)
            return
        limit = body_limit(path)
        if limit is None:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await _send_answer(send, too_large(path))
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # http.disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


# --- daphne ----------------------------------------------------------------------------------


def install_daphne_guard() -> None:
    """Make daphne's Server build its HTTP requests as GuardedRequest (idempotent)."""
    import daphne.server

    daphne.server.HTTPFactory = _guarded_factory()


def _guarded_factory() -> type:
    from daphne.http_protocol import HTTPFactory, WebRequest
    from twisted.internet import reactor

    global _FACTORY
    if _FACTORY is not None:
        return _FACTORY

    class GuardedRequest(WebRequest):
        """daphne's request, refusing on headers and bounding the body (see the module)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Form bodies are Django's business, in a worker thread, and only where a view
            # asks for request.POST — never in the reactor.
            self._parsePOSTFormSubmission = False
            self._guard_limit: int | None = None
            self._guard_received = 0
            self._guard_refused = False
            self._guard_path = ""

        def gotLength(self, length: int | None) -> None:
            # The headers are complete; the request line is still on the channel.
            channel = self.channel
            command = getattr(channel, "_command", None)
            uri = getattr(channel, "_path", None)
            if command is None or uri is None:  # not HTTP/1.x: leave it to daphne
                super().gotLength(length)
                return
            raw_path, _, query = uri.partition(b"?")
            path = unquote(raw_path.decode("latin-1"))
            headers: dict[str, str] = {}
            for name, values in self.requestHeaders.getAllRawHeaders():
                headers[name.decode("latin-1").lower()] = b",".join(values).decode("latin-1")
            self._guard_path = path
            self._guard_limit = body_limit(path)
            answer = early_answer(
                method=command.decode("latin-1"),
                path=path,
                query_string=query.decode("latin-1"),
                headers=headers,
            )
            limit = self._guard_limit
            if answer is None and length is not None and limit is not None and length > limit:
                answer = too_large(path)
            if answer is not None:
                self.content = BytesIO()
                self._refuse(answer)
                return
            super().gotLength(length)

        def handleContentChunk(self, data: bytes) -> None:
            if self._guard_refused:
                return  # discarded while the connection lingers
            self._guard_received += len(data)
            if self._guard_limit is not None and self._guard_received > self._guard_limit:
                self._refuse(too_large(self._guard_path))
                return
            super().handleContentChunk(data)

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            if self._guard_refused:
                return
            super().requestReceived(command, path, version)

        def _refuse(self, answer: Answer) -> None:
            self._guard_refused = True
            channel = self.channel
            # No "100 Continue" after the answer, and no further request on this connection.
            self.requestHeaders.removeHeader(b"expect")
            channel.persistent = False
            reason = HTTPStatus(answer.status).phrase.encode()
            head = [b"HTTP/1.1 %d %s" % (answer.status, reason)]
            head += [name + b": " + value for name, value in answer.header_list()]
            head.append(b"connection: close")
            transport = channel.transport
            transport.write(b"\r\n".join(head) + b"\r\n\r\n" + answer.encoded())
            logger.info("Refused %s before its body: %d", self._guard_path, answer.status)
            if hasattr(transport, "loseWriteConnection"):
                transport.loseWriteConnection()
                reactor.callLater(LINGER_SECONDS, _close, channel)  # type: ignore[arg-type]
            else:
                channel.loseConnection()

    def _close(channel: Any) -> None:
        if channel.transport is not None:
            channel.transport.abortConnection()

    class GuardedHTTPFactory(HTTPFactory):
        def buildProtocol(self, addr: Any) -> Any:
            protocol = super().buildProtocol(addr)
            protocol.requestFactory = GuardedRequest
            return protocol

    _FACTORY = GuardedHTTPFactory
    return _FACTORY


_FACTORY: type | None = None

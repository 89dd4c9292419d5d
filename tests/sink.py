"""A real HTTP server that receives deliveries in tests and benchmarks.

Responses are programmed by path: `/status/500,200` answers 500 to the first request and 200
to every later one; `/slow/<seconds>` sleeps before answering 200; `/redirect` answers 302;
`/big/<bytes>` answers 200 with a body of that many bytes; `/nul/<status>` (200 when left out)
answers with NUL bytes in its body and in a header value; anything else answers 200. A
`retry_after` query parameter adds a `Retry-After` header with its value to any answer.
Every request is recorded with its method, path, query (parsed and raw), headers, body and
arrival time (monotonic clock); `wait_for` polls with a deadline instead of sleeping and
hoping. `standard_webhooks_valid` checks a request's signature the way a receiver would,
independently of the sender's code."""

import base64
import hashlib
import hmac
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# What `/nul` answers: text PostgreSQL cannot store as it is (no NUL in text or jsonb).
NUL_BODY = b'{"ok": "a\x00b"}'
NUL_HEADERS = {"X-Nul": "a\x00b"}


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    query_string: str = ""
    # When it arrived (time.monotonic(), once its body was read): latency tests compare it
    # with the client's clock.
    at: float = field(default_factory=time.monotonic)


@dataclass
class Sink:
    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def received(self, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]

    def webhook_ids(self) -> Counter[str]:
        """How many times each `webhook-id` arrived (more than once = a duplicate delivery)."""
        with self.lock:
            return Counter(r.headers.get("webhook-id", "") for r in self.requests)

    def wait_for(self, condition: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"condition not met in {timeout}s; got {len(self.requests)} requests"
                )
            time.sleep(0.02)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def standard_webhooks_valid(request: Received, secret: str) -> bool:
    """Whether `webhook-signature` is HMAC-SHA256 over "id.timestamp.body" with the
    base64-decoded secret (after `whsec_`). For GET the signed body is the query string."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    body = request.query_string if request.method == "GET" else request.body.decode()
    content = f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.{body}"
    expected = base64.b64encode(hmac.new(key, content.encode(), hashlib.sha256).digest()).decode()
    signatures = request.headers.get("webhook-signature", "").split()
    return any(
        version == "v1" and hmac.compare_digest(value, expected)
        for version, _, value in (s.partition(",") for s in signatures)
    )


def _handler(sink: Sink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle on, the body waits for the
        # client's delayed ACK (~40 ms per request on Linux).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            with sink.lock:
                sink.requests.append(
                    Received(
                        self.command,
                        parts.path,
                        query,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                        parts.query,
                    )
                )
                sink.counters[parts.path] += 1
                nth = sink.counters[parts.path]
            status, extra = 200, {}
            payload = b'{"ok": true}'
            if parts.path.startswith("/status/"):
                codes = [int(c) for c in parts.path.split("/")[2].split(",")]
                status = codes[min(nth, len(codes)) - 1]
            elif parts.path.startswith("/slow/"):
                time.sleep(float(parts.path.split("/")[2]))
            elif parts.path == "/redirect":
                status, extra = 302, {"Location": "/elsewhere"}
            elif parts.path.startswith("/big/"):
                payload = b"x" * int(parts.path.split("/")[2])
            elif parts.path == "/nul" or parts.path.startswith("/nul/"):
                status = int(parts.path.split("/")[2]) if parts.path.count("/") > 1 else 200
                payload = NUL_BODY
                extra = dict(NUL_HEADERS)
            if "retry_after" in query:
                extra["Retry-After"] = query["retry_after"]
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout under test, a killed worker) is not an error here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def start_sink(host: str = "127.0.0.1") -> Sink:
    server = _Server((host, 0), BaseHTTPRequestHandler)
    sink = Sink(server)
    server.RequestHandlerClass = _handler(sink)
    # A short poll interval: shutdown() waits for the loop to notice.
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return sink

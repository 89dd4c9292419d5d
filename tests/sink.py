"""A real HTTP server that receives deliveries in tests and benchmarks.

Responses are programmed by path: `/status/500,200` answers 500 to the first request and 200
to every later one; `/slow/<seconds>` sleeps before answering 200; `/redirect` answers 302;
anything else answers 200. Every request is recorded with its method, path, query, headers
and body; `wait_for` polls with a deadline instead of sleeping and hoping."""

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Sink:
    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def received(self, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met in {timeout}s; got {len(self.requests)} requests")
            time.sleep(0.02)


def _handler(sink: Sink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with sink.lock:
                sink.requests.append(
                    Received(
                        self.command,
                        parts.path,
                        dict(parse_qsl(parts.query, keep_blank_values=True)),
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                    )
                )
                sink.counters[parts.path] += 1
                nth = sink.counters[parts.path]
            status, extra = 200, {}
            if parts.path.startswith("/status/"):
                codes = [int(c) for c in parts.path.split("/")[2].split(",")]
                status = codes[min(nth, len(codes)) - 1]
            elif parts.path.startswith("/slow/"):
                time.sleep(float(parts.path.split("/")[2]))
            elif parts.path == "/redirect":
                status, extra = 302, {"Location": "/elsewhere"}
            payload = b'{"ok": true}'
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler


def start_sink(host: str = "127.0.0.1") -> Sink:
    server = ThreadingHTTPServer((host, 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    sink = Sink(server)
    server.RequestHandlerClass = _handler(sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return sink

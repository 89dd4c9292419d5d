"""incoming_data against real servers over real sockets: `manage.py serve` and plain
`daphne project.asgi:application` refuse on headers, while the body is still on its way, and
never parse a form body in the reactor (which stalled every other request of the process)."""

import json
import socket
import threading
import time
from typing import Any

import pytest
import requests

from delivery.models import DeliveryLog, Event
from tests.processes import Processes

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MIB = 1024 * 1024
LIMIT = MIB  # INCOMING_MAX_BODY_BYTES of the servers below
PATH = "/server/incoming_data/"


@pytest.fixture(params=["serve", "daphne"])
def server(request: pytest.FixtureRequest, processes: Processes) -> Any:
    return processes.server(request.param, INCOMING_MAX_BODY_BYTES=str(LIMIT))


def error(code: str, message: str) -> dict[str, Any]:
    return {"success": False, "code": code, "message": message}


class Raw:
    """One HTTP/1.1 connection on a plain socket: send what we like, read what comes."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.received = b""

    def send_head(self, *headers: str, path: str = PATH) -> None:
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
        self.sock.sendall("\r\n".join(lines).encode("latin-1"))

    def response(self, timeout: float) -> tuple[int, dict[str, str], bytes]:
        """Read until a complete response (Content-Length) arrived; fail after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            head, sep, body = self.received.partition(b"\r\n\r\n")
            if sep:
                lines = head.decode("latin-1").split("\r\n")
                headers = dict(line.lower().split(": ", 1) for line in lines[1:])
                if len(body) >= int(headers.get("content-length", 0)):
                    return int(lines[0].split()[1]), headers, body
            left = deadline - time.monotonic()
            assert left > 0, f"no complete response within {timeout}s: {self.received[:300]!r}"
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed before a response: {self.received[:300]!r}"
            self.received += chunk

    def close(self) -> None:
        self.sock.close()


def test_content_length_over_the_limit_is_answered_at_once(server: Any) -> None:
    raw = Raw(server.url)
    started = time.monotonic()
    raw.send_head("Content-Type: application/json", "CL-X-TOKEN: x", "Content-Length: 104857600")
    status, headers, body = raw.response(timeout=1.0)  # no body byte was sent
    assert time.monotonic() - started < 1.0
    assert (status, headers["content-type"]) == (413, "application/json")
    assert json.loads(body) == error("payload_too_large", f"Body larger than {LIMIT} bytes.")
    raw.close()


def _send_chunks_until_answered(
    raw: Raw, total: int
) -> tuple[int, tuple[int, dict[str, str], bytes]]:
    """Send a chunked body of `total` bytes from a thread while reading the answer; returns how
    many bytes were sent when the answer arrived (the sender stops then, or when the server
    closes the connection), and the answer."""
    sent = 0
    answered = threading.Event()

    def sender() -> None:
        nonlocal sent
        chunk = b"x" * 65536
        frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        try:
            while sent < total and not answered.is_set():
                raw.sock.sendall(frame)
                sent += len(chunk)
        except OSError:  # the server closed the connection
            pass

    thread = threading.Thread(target=sender)
    thread.start()
    try:
        answer = raw.response(timeout=10)
    finally:
        answered.set()
        thread.join(10)
    return sent, answer


def test_chunked_body_without_token_is_refused_before_it_is_sent(server: Any) -> None:
    raw = Raw(server.url)
    raw.send_head("Content-Type: application/json", "Transfer-Encoding: chunked")
    sent, (status, _, body) = _send_chunks_until_answered(raw, 30 * MIB)
    assert status == 401
    assert json.loads(body) == error("unauthenticated", "Missing or invalid CL-X-TOKEN.")
    assert sent < 30 * MIB
    raw.close()


def test_chunked_body_over_the_limit_is_stopped_at_the_limit(server: Any, app_secret: str) -> None:
    raw = Raw(server.url)
    raw.send_head(
        "Content-Type: application/json", f"CL-X-TOKEN: {app_secret}", "Transfer-Encoding: chunked"
    )
    sent, (status, _, body) = _send_chunks_until_answered(raw, 30 * MIB)
    assert status == 413
    assert json.loads(body) == error("payload_too_large", f"Body larger than {LIMIT} bytes.")
    assert sent < 30 * MIB
    assert (Event.objects.count(), DeliveryLog.objects.count()) == (0, 0)
    raw.close()


FORM = b"--xyz\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--xyz--\r\n"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param("multipart/form-data; boundary=xyz", FORM, id="multipart"),
        # Twisted answered this one with an empty 400 after parsing it in the reactor.
        pytest.param("multipart/form-data", b"no boundary", id="bad-multipart"),
        pytest.param("application/x-www-form-urlencoded", b"a=1&b=2", id="urlencoded"),
    ],
)
def test_form_bodies_get_the_json_415(
    server: Any, app_secret: str, content_type: str, body: bytes
) -> None:
    response = requests.post(
        f"{server.url}{PATH}",
        data=body,
        headers={"Content-Type": content_type, "CL-X-TOKEN": app_secret},
        timeout=10,
    )
    assert response.status_code == 415
    assert response.json() == error(
        "unsupported_media_type", "Content-Type must be application/json."
    )


def test_a_huge_form_does_not_stall_other_requests(server: Any) -> None:
    # 1.5 million fields, 14 MiB: refused on its headers, and never parsed. Sent to the
    # GraphQL endpoint too, whose limit is Django's DATA_UPLOAD_MAX_MEMORY_SIZE.
    form = b"&".join(b"f%d=v" % n for n in range(1_500_000))
    assert len(form) > 14 * MIB
    slowest = 0.0
    answers: list[int] = []

    def flood(path: str) -> None:
        try:
            response = requests.post(
                f"{server.url}{path}",
                data=form,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                timeout=30,
            )
            answers.append(response.status_code)
        except requests.ConnectionError:
            answers.append(0)  # closed by the server after its answer

    floods = [threading.Thread(target=flood, args=(p,)) for p in (PATH, "/graphql/") * 2]
    for thread in floods:
        thread.start()
    session = requests.Session()
    while any(t.is_alive() for t in floods):
        started = time.monotonic()
        response = session.post(f"{server.url}/graphql/", json={"query": "{ me { id } }"})
        assert response.status_code == 200
        slowest = max(slowest, time.monotonic() - started)
    for thread in floods:
        thread.join()
    assert slowest < 0.5, f"a small request waited {slowest:.2f}s"
    assert all(status in (0, 413, 415) for status in answers), answers

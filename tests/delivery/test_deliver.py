"""engine.deliver_log against the real sink (tests/sink.py): what a destination receives,
and how each answer moves the log (success, retrying with its due time, failed)."""

import json
import socket
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import DataError
from django.test import override_settings
from django.utils import timezone

from delivery import engine, outbox, tasks, transport
from delivery.models import DeliveryAttempt, DeliveryLog, LogStatus
from identity.models import Account
from tests.delivery.conftest import due_log, sink_destination
from tests.sink import Sink, standard_webhooks_valid

USER_AGENT = "DataPusher/1.0 (+webhooks)"
PAYLOAD: dict[str, Any] = {
    "name": "Ada Lovelace",
    "count": 3,
    "paid": True,
    "tags": ["a", "b"],
    "customer": {"id": 7, "city": "Zürich"},
    "note": "a&b=c d",
}


def deliver(log: DeliveryLog) -> DeliveryLog:
    """One try, as the task runs it; returns the log as stored afterwards."""
    engine.deliver_log(log_id=log.pk)
    log.refresh_from_db()
    return log


def make_due(log: DeliveryLog) -> None:
    """Let the time pass until the log's next try (the retry schedule is not under test)."""
    DeliveryLog.objects.filter(pk=log.pk).update(next_attempt_at=timezone.now())


def attempts(log: DeliveryLog) -> list[tuple[int, int | None, str]]:
    return list(
        DeliveryAttempt.objects.filter(log=log).values_list("number", "status_code", "error_class")
    )


def delay_of(log: DeliveryLog) -> float:
    assert log.next_attempt_at is not None
    assert log.processed_timestamp is not None
    return (log.next_attempt_at - log.processed_timestamp).total_seconds()


# --- What arrives -----------------------------------------------------------------------------


def test_get_receives_the_payload_as_query_parameters(account: Account, sink: Sink) -> None:
    destination = sink_destination(account, sink, "/get", http_method="GET")
    log = deliver(due_log(destination, PAYLOAD))

    assert log.status == LogStatus.SUCCESS
    [request] = sink.received()
    assert (request.method, request.path, request.body) == ("GET", "/get", b"")
    # Strings as they are, everything else as compact JSON.
    assert {k: v for k, v in request.query.items() if k != "customer"} == {
        "name": "Ada Lovelace",
        "count": "3",
        "paid": "true",
        "tags": '["a","b"]',
        "note": "a&b=c d",
    }
    assert json.loads(request.query["customer"]) == {"id": 7, "city": "Zürich"}
    assert "content-type" not in request.headers
    assert standard_webhooks_valid(request, destination.signing_secret)


def test_get_keeps_the_query_of_the_destination_url(account: Account, sink: Sink) -> None:
    destination = sink_destination(account, sink, "/get?source=dp", http_method="GET")
    deliver(due_log(destination, {"a": "1"}))
    [request] = sink.received()
    assert request.query_string == "source=dp&a=1"
    # The receiver verifies the query string exactly as it arrives.
    assert standard_webhooks_valid(request, destination.signing_secret)


def test_get_signs_the_query_of_the_destination_url_as_it_goes_on_the_wire(
    account: Account, sink: Sink
) -> None:
    # requests sends %7E as "~" (STACK.md trap 16): the signature covers what is sent.
    destination = sink_destination(account, sink, "/get?tilde=%7E&sp=a%20b", http_method="GET")
    deliver(due_log(destination, {"a": "1"}))
    [request] = sink.received()
    assert request.query_string == "tilde=~&sp=a%20b&a=1"
    assert standard_webhooks_valid(request, destination.signing_secret)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_other_methods_receive_the_payload_as_json_body(
    account: Account, sink: Sink, method: str
) -> None:
    destination = sink_destination(account, sink, "/body", http_method=method)
    log = deliver(due_log(destination, PAYLOAD))

    assert log.status == LogStatus.SUCCESS
    [request] = sink.received()
    assert (request.method, request.query) == (method, {})
    assert json.loads(request.body) == PAYLOAD
    assert request.headers["content-type"] == "application/json"
    assert standard_webhooks_valid(request, destination.signing_secret)


def test_every_request_carries_custom_and_standard_webhooks_headers(
    account: Account, sink: Sink
) -> None:
    destination = sink_destination(
        account,
        sink,
        headers={"Authorization": "Bearer dest-token", "X-Tenant": "acme"},
    )
    log = due_log(destination)
    before = int(timezone.now().timestamp())
    deliver(log)

    [request] = sink.received()
    assert request.headers["authorization"] == "Bearer dest-token"
    assert request.headers["x-tenant"] == "acme"
    assert request.headers["user-agent"] == USER_AGENT
    assert request.headers["webhook-id"] == log.webhook_id
    assert before <= int(request.headers["webhook-timestamp"]) <= before + 5
    assert request.headers["webhook-signature"].startswith("v1,")
    assert standard_webhooks_valid(request, destination.signing_secret)
    assert not standard_webhooks_valid(request, transport.new_signing_secret())


def test_rotated_signing_secret_signs_the_next_try(account: Account, sink: Sink) -> None:
    destination = sink_destination(account, sink, "/status/500,200")
    log = deliver(due_log(destination))
    old_secret = destination.signing_secret
    destination.signing_secret = transport.new_signing_secret()
    destination.save()
    make_due(log)
    deliver(log)

    first, second = sink.received()
    assert standard_webhooks_valid(first, old_secret)
    assert standard_webhooks_valid(second, destination.signing_secret)
    assert not standard_webhooks_valid(second, old_secret)


# --- Outcomes -----------------------------------------------------------------------------------


def test_500_then_200_retries_then_succeeds_with_two_attempts(account: Account, sink: Sink) -> None:
    destination = sink_destination(account, sink, "/status/500,200")
    log = due_log(destination)

    log = deliver(log)
    assert (log.status, log.attempt_count, log.last_status_code) == (LogStatus.RETRYING, 1, 500)
    assert log.last_error == "HTTP 500 Internal Server Error"
    assert 5 <= delay_of(log) <= 5.5  # first step of the default schedule, jitter add-only

    # Not due yet: a task arriving early (or twice) neither claims nor sends.
    assert engine.deliver_log(log_id=log.pk) is None
    assert len(sink.received()) == 1

    make_due(log)
    log = deliver(log)
    assert (log.status, log.attempt_count, log.last_status_code) == (LogStatus.SUCCESS, 2, 200)
    assert (log.last_error, log.next_attempt_at) == ("", None)
    assert attempts(log) == [(1, 500, "HTTPStatus"), (2, 200, "")]
    first, second = sink.received()
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == log.webhook_id
    assert standard_webhooks_valid(first, destination.signing_secret)
    assert standard_webhooks_valid(second, destination.signing_secret)


def test_success_is_final_and_never_sent_again(account: Account, sink: Sink) -> None:
    log = deliver(due_log(sink_destination(account, sink)))
    assert log.status == LogStatus.SUCCESS
    assert engine.deliver_log(log_id=log.pk) is None
    assert len(sink.received()) == 1


def test_404_fails_after_one_attempt(account: Account, sink: Sink) -> None:
    log = deliver(due_log(sink_destination(account, sink, "/status/404")))
    assert (log.status, log.attempt_count, log.last_status_code) == (LogStatus.FAILED, 1, 404)
    assert log.last_error == "HTTP 404 Not Found"
    assert log.next_attempt_at is None
    assert attempts(log) == [(1, 404, "HTTPStatus")]


@pytest.mark.parametrize("code", [408, 429, 502, 503])
def test_transient_statuses_are_retried(account: Account, sink: Sink, code: int) -> None:
    log = deliver(due_log(sink_destination(account, sink, f"/status/{code}")))
    assert (log.status, log.last_status_code) == (LogStatus.RETRYING, code)


@override_settings(DELIVERY_READ_TIMEOUT=0.2)
def test_timeout_is_retried(account: Account, sink: Sink) -> None:
    log = deliver(due_log(sink_destination(account, sink, "/slow/1")))
    assert (log.status, log.attempt_count, log.last_status_code) == (LogStatus.RETRYING, 1, None)
    [attempt] = DeliveryAttempt.objects.filter(log=log)
    assert attempt.error_class == "ReadTimeout"
    assert attempt.error_message.endswith("Read timed out. (read timeout=0.2)")
    assert attempt.duration_ms < 1000


def test_connection_refused_is_retried(account: Account, sink: Sink) -> None:
    destination = sink_destination(account, sink)
    sink.close()
    log = deliver(due_log(destination))
    assert (log.status, log.attempt_count) == (LogStatus.RETRYING, 1)
    assert DeliveryAttempt.objects.get(log=log).error_class == "ConnectionError"


def test_redirect_fails_and_is_not_followed(account: Account, sink: Sink) -> None:
    log = deliver(due_log(sink_destination(account, sink, "/redirect")))
    assert (log.status, log.attempt_count, log.last_status_code) == (LogStatus.FAILED, 1, 302)
    assert log.last_error == "HTTP 302: redirects are not followed (Location: /elsewhere)"
    assert [r.path for r in sink.received()] == ["/redirect"]


@override_settings(DELIVERY_RETRY_SCHEDULE=[5.0, 30.0], DELIVERY_RETRY_AFTER_CAP=300.0)
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/status/429?retry_after=120", (120, 120), id="429-later-than-schedule"),
        pytest.param("/status/503?retry_after=120", (120, 120), id="503-later-than-schedule"),
        pytest.param("/status/503?retry_after=100000", (300, 300), id="capped"),
        pytest.param("/status/429?retry_after=1", (5, 5.5), id="never-earlier-than-schedule"),
        pytest.param("/status/500?retry_after=120", (5, 5.5), id="ignored-on-500"),
        pytest.param("/status/429?retry_after=soon", (5, 5.5), id="unparsable-ignored"),
    ],
)
def test_retry_after_is_honoured_within_the_cap(
    account: Account, sink: Sink, path: str, expected: tuple[float, float]
) -> None:
    log = deliver(due_log(sink_destination(account, sink, path)))
    assert log.status == LogStatus.RETRYING
    low, high = expected
    assert low <= delay_of(log) <= high


@override_settings(DELIVERY_RETRY_SCHEDULE=[0.0, 0.0])
def test_exhausted_retry_schedule_fails(account: Account, sink: Sink) -> None:
    log = due_log(sink_destination(account, sink, "/status/500"))
    assert [engine.deliver_log(log_id=log.pk) for _ in range(4)] == [
        LogStatus.RETRYING,
        LogStatus.RETRYING,
        LogStatus.FAILED,
        None,
    ]
    log.refresh_from_db()
    assert (log.status, log.attempt_count, log.next_attempt_at) == (LogStatus.FAILED, 3, None)
    assert len(sink.received()) == 3


@override_settings(DELIVERY_RESPONSE_BODY_LIMIT=100)
def test_response_body_is_stored_truncated(account: Account, sink: Sink) -> None:
    big = deliver(due_log(sink_destination(account, sink, "/big/100000")))
    small = deliver(due_log(sink_destination(account, sink, "/small")))
    assert (big.status, small.status) == (LogStatus.SUCCESS, LogStatus.SUCCESS)
    assert DeliveryAttempt.objects.get(log=big).response_body == "x" * 100
    attempt = DeliveryAttempt.objects.get(log=small)
    assert attempt.response_body == '{"ok": true}'
    assert attempt.response_headers["Content-Type"] == "application/json"


def test_deleted_destination_fails_the_log_without_a_request(account: Account, sink: Sink) -> None:
    destination = sink_destination(account, sink)
    log = due_log(destination)
    destination.delete()
    log = deliver(log)
    assert (log.status, log.attempt_count, log.last_error) == (
        LogStatus.FAILED,
        0,
        "Destination deleted.",
    )
    assert sink.received() == []


def test_inactive_destination_fails_the_log_without_a_request(account: Account, sink: Sink) -> None:
    log = deliver(due_log(sink_destination(account, sink, is_active=False)))
    assert (log.status, log.last_error) == (LogStatus.FAILED, "Destination is inactive.")
    assert sink.received() == []


# --- Private networks -------------------------------------------------------------------------


@override_settings(DELIVERY_ALLOW_PRIVATE_NETWORKS=False)
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_private_destination_is_blocked_without_a_request(
    account: Account, sink: Sink, host: str
) -> None:
    destination = sink_destination(account, sink)
    destination.url = destination.url.replace("127.0.0.1", host)
    destination.save()

    log = deliver(due_log(destination))

    assert (log.status, log.attempt_count, log.last_status_code) == (LogStatus.FAILED, 1, None)
    [attempt] = DeliveryAttempt.objects.filter(log=log)
    assert attempt.error_class == "BlockedAddress"
    assert attempt.error_message.startswith(f"{host} resolves to ")
    assert "DELIVERY_ALLOW_PRIVATE_NETWORKS is off" in attempt.error_message
    assert log.last_error == attempt.error_message
    assert sink.received() == []


@override_settings(DELIVERY_ALLOW_PRIVATE_NETWORKS=False)
def test_address_changing_after_the_dns_check_is_caught_on_the_socket(
    account: Account, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS rebinding: the name looked public when checked, the connection lands on loopback.
    monkeypatch.setattr(transport, "check_host", lambda host, port: None)
    log = deliver(due_log(sink_destination(account, sink)))
    assert (log.status, log.attempt_count) == (LogStatus.FAILED, 1)
    [attempt] = DeliveryAttempt.objects.filter(log=log)
    assert attempt.error_class == "BlockedAddress"
    assert attempt.error_message == "Connected to 127.0.0.1, a non-public address; refused."
    assert sink.received() == []


@override_settings(DELIVERY_ALLOW_PRIVATE_NETWORKS=False)
def test_name_that_does_not_resolve_is_retried(
    account: Account, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A resolver hiccup is a connection problem like any other, not a blocked address.
    def no_dns(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    # Only the transport's view of the resolver: the database and Redis keep theirs.
    fake = SimpleNamespace(getaddrinfo=no_dns, gaierror=socket.gaierror, IPPROTO_TCP=6)
    monkeypatch.setattr(transport, "socket", fake)
    log = deliver(due_log(sink_destination(account, sink)))
    assert (log.status, log.attempt_count) == (LogStatus.RETRYING, 1)
    [attempt] = DeliveryAttempt.objects.filter(log=log)
    assert attempt.error_class == "ConnectionError"
    assert attempt.error_message == (
        "Cannot resolve 127.0.0.1: Temporary failure in name resolution"
    )
    assert sink.received() == []


def test_task_for_a_log_that_no_longer_exists_does_nothing(account: Account, sink: Sink) -> None:
    log = due_log(sink_destination(account, sink))
    log.event.delete()  # retention purged it while its task waited in the queue
    assert tasks.deliver.call_local(log.pk) is None
    assert sink.received() == []


# --- Every send ends in a recorded attempt and a next state -----------------------------------


def swept_a_day_later() -> int:
    """How many deliveries the sweeper would re-enqueue a day from now."""
    return tasks.sweep_now(now=timezone.now() + timedelta(days=1))


def test_header_value_the_client_cannot_encode_fails_once_without_a_request(
    account: Account, sink: Sink
) -> None:
    # Stored before header values were validated: every send died before the request and the
    # log stayed `sending`, re-sent by the sweeper at each lease expiry.
    destination = sink_destination(account, sink, headers={"X-Snow": "\u2603"})
    log = deliver(due_log(destination))

    assert (log.status, log.attempt_count, log.last_status_code, log.next_attempt_at) == (
        LogStatus.FAILED,
        1,
        None,
        None,
    )
    [attempt] = DeliveryAttempt.objects.filter(log=log)
    assert (attempt.number, attempt.status_code, attempt.error_class) == (
        1,
        None,
        "UnicodeEncodeError",
    )
    assert attempt.error_message == log.last_error == UNENCODABLE
    assert sink.received() == []
    assert swept_a_day_later() == 0
    assert DeliveryAttempt.objects.filter(log=log).count() == 1


UNENCODABLE = (
    "'latin-1' codec can't encode character '\\u2603' in position 0: ordinal not in range(256)"
)


@override_settings(DELIVERY_RETRY_SCHEDULE=[0.0])
def test_unexpected_error_while_sending_is_an_attempt_retried_within_the_schedule(
    account: Account, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(transport, "_adapter", broken)
    log = due_log(sink_destination(account, sink))

    assert [engine.deliver_log(log_id=log.pk) for _ in range(3)] == [
        LogStatus.RETRYING,
        LogStatus.FAILED,
        None,
    ]
    log.refresh_from_db()
    assert (log.status, log.attempt_count, log.next_attempt_at, log.last_error) == (
        LogStatus.FAILED,
        2,
        None,
        "boom",
    )
    assert attempts(log) == [(1, None, "RuntimeError"), (2, None, "RuntimeError")]
    assert swept_a_day_later() == 0


def test_exception_escaping_the_transport_is_still_an_attempt(
    account: Account, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    def send(**kwargs: object) -> None:
        raise KeyError("signing_secret")

    monkeypatch.setattr(transport, "send", send)
    log = deliver(due_log(sink_destination(account, sink)))

    assert (log.status, log.attempt_count, log.last_error) == (
        LogStatus.RETRYING,
        1,
        "'signing_secret'",
    )
    assert 5 <= delay_of(log) <= 5.5
    assert attempts(log) == [(1, None, "KeyError")]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/nul", LogStatus.SUCCESS, 200),
        ("/nul/404", LogStatus.FAILED, 404),
        ("/nul/500", LogStatus.RETRYING, 500),
    ],
)
def test_answer_with_nul_bytes_is_stored_with_replacement_characters(
    account: Account, sink: Sink, path: str, status: str, code: int
) -> None:
    # PostgreSQL text and jsonb cannot hold NUL: the answer is stored with U+FFFD instead.
    log = deliver(due_log(sink_destination(account, sink, path)))

    assert (log.status, log.attempt_count, log.last_status_code) == (status, 1, code)
    [attempt] = DeliveryAttempt.objects.filter(log=log)
    assert attempt.status_code == code
    assert attempt.response_body == '{"ok": "a\ufffdb"}'
    assert attempt.response_headers["X-Nul"] == "a\ufffdb"
    assert len(sink.received()) == 1
    if status != LogStatus.RETRYING:
        assert log.next_attempt_at is None
        assert swept_a_day_later() == 0
        assert len(sink.received()) == 1


def test_text_of_an_outcome_is_made_storable_everywhere(
    account: Account, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NUL and unpaired surrogates wherever text of an outcome is stored.
    outcome = transport.Outcome(
        transport.Kind.PERMANENT,
        3,
        status_code=400,
        headers={"X-\x00Name": "\ud800v\x00", "X-Ok": "1"},
        body="body\x00\udfff",
        error_class="Http\x00Status",
        error_message="HTTP 400 \x00\ud83d",
    )
    monkeypatch.setattr(transport, "send", lambda **kwargs: outcome)
    log = deliver(due_log(sink_destination(account, sink)))

    assert (log.status, log.attempt_count, log.last_error) == (
        LogStatus.FAILED,
        1,
        "HTTP 400 \ufffd\ufffd",
    )
    [attempt] = DeliveryAttempt.objects.filter(log=log)
    assert attempt.response_headers == {"X-\ufffdName": "\ufffdv\ufffd", "X-Ok": "1"}
    assert attempt.response_body == "body\ufffd\ufffd"
    assert (attempt.error_class, attempt.error_message) == (
        "Http\ufffdStatus",
        "HTTP 400 \ufffd\ufffd",
    )


def test_attempt_that_cannot_be_stored_is_recorded_without_the_answer(
    account: Account, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_store = outbox._store
    tried: list[list[tuple[Any, ...]]] = []

    def store(logs: Any, rows: list[tuple[Any, ...]], *, lease: Any) -> set[int]:
        tried.append(list(rows))
        if len(tried) == 1:
            raise DataError("simulated: the answer cannot be stored")
        return real_store(logs, rows, lease=lease)

    monkeypatch.setattr(outbox, "_store", store)
    log = deliver(due_log(sink_destination(account, sink, "/status/404")))

    assert len(tried) == 2
    assert (log.status, log.attempt_count, log.last_status_code, log.next_attempt_at) == (
        LogStatus.FAILED,
        1,
        404,
        None,
    )
    [attempt] = DeliveryAttempt.objects.filter(log=log)
    assert (attempt.number, attempt.status_code, attempt.error_class) == (1, 404, "HTTPStatus")
    assert (attempt.response_headers, attempt.response_body) == ({}, "")
    assert (
        attempt.error_message
        == log.last_error
        == ("HTTP 404 Not Found (the answer could not be stored: DataError)")
    )
    assert len(sink.received()) == 1
    assert swept_a_day_later() == 0

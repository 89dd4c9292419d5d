"""What goes on the wire is what was received and what was signed, and each delivery has a
`webhook-id` of its own: the bytes of the incoming body are sent as they arrived (PostgreSQL's
jsonb reorders keys, drops duplicates and whitespace), a GET query string is signed as the
receiver gets it, and `webhook-id` is random, not a database id, and the same on every try.
Runs on SQLite and on PostgreSQL."""

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from django.db.models import Count
from django.utils import timezone

from delivery import engine, tasks
from delivery.models import DeliveryLog, Event, LogStatus
from identity.models import Account
from tests.conftest import GraphQL, Persona
from tests.delivery.conftest import Poster, due_log, sink_destination
from tests.sink import Received, Sink, standard_webhooks_valid

Capture = Callable[..., AbstractContextManager[list[Any]]]

# Keys not in sorted order, a duplicate key, whitespace jsonb drops, \u escapes and raw UTF-8.
RAW = (
    b'{ "zeta": 1,\n  "alpha" : {"y": "\\u00e9t\\u00e9", "b": [1, 2.50, 1e2]},'
    b' "dup": 1, "dup": 2,\t"m\xc3\xa9": "\xe2\x82\xac" }'
)


def deliver(log: DeliveryLog) -> DeliveryLog:
    engine.deliver_log(log_id=log.pk)
    log.refresh_from_db()
    return log


def verify(request: Received, secret: str) -> bool:
    """The receiver's check (standardwebhooks): HMAC over id.timestamp.<raw bytes received>."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    body = request.query_string.encode() if request.method == "GET" else request.body
    content = (
        f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.".encode() + body
    )
    expected = "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(request.headers["webhook-signature"], expected)


# --- The bytes received -----------------------------------------------------------------------


def test_incoming_body_is_stored_as_received(
    account: Account,
    app_secret: str,
    post_incoming: Poster,
    django_capture_on_commit_callbacks: Capture,
    sink: Sink,
) -> None:
    sink_destination(account, sink, "/hook", http_method="POST")
    with django_capture_on_commit_callbacks(execute=True):
        response = post_incoming(RAW, token=app_secret, event_id="raw-1")
    assert response.status_code == 202
    event = Event.objects.get(event_id="raw-1")
    assert event.body == RAW.decode()
    assert event.payload == {
        "zeta": 1,
        "alpha": {"y": "été", "b": [1, 2.5, 100.0]},
        "dup": 2,
        "mé": "€",
    }
    [request] = sink.received()
    assert request.body == RAW
    assert verify(request, event.logs.get().destination.signing_secret)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_every_body_method_sends_the_bytes_received_and_signs_them(
    account: Account, sink: Sink, method: str
) -> None:
    destination = sink_destination(account, sink, "/hook", http_method=method)
    result = tasks.event_accept(
        account_id=account.pk, event_id="raw", payload={"zeta": 1}, size=len(RAW), body=RAW
    )
    assert result.deliveries == 1
    log = deliver(DeliveryLog.objects.get())
    assert (log.status, log.last_error) == (LogStatus.SUCCESS, "")
    [request] = sink.received()
    assert (request.method, request.body) == (method, RAW)
    assert request.headers["content-type"] == "application/json"
    assert verify(request, destination.signing_secret)
    assert standard_webhooks_valid(request, destination.signing_secret)


def test_a_body_in_utf16_is_sent_as_the_same_text_in_utf8(account: Account, sink: Sink) -> None:
    destination = sink_destination(account, sink)
    text = '{"b": 1,  "a": "é"}'
    tasks.event_accept(
        account_id=account.pk,
        event_id="utf16",
        payload={"b": 1, "a": "é"},
        size=10,
        body=text.encode("utf-16"),
    )
    log = deliver(DeliveryLog.objects.get(event__event_id="utf16"))
    assert log.status == LogStatus.SUCCESS
    [request] = sink.received()
    assert request.body == text.encode()
    assert verify(request, destination.signing_secret)


def test_event_stored_without_its_body_falls_back_to_compact_json(
    account: Account, sink: Sink
) -> None:
    # Events stored before the body was kept (and due_log's) have an empty body.
    destination = sink_destination(account, sink)
    log = deliver(due_log(destination, {"b": 1, "a": "é"}))
    event = Event.objects.get(pk=log.event_id)
    assert event.body == ""
    [request] = sink.received()
    # As stored (PostgreSQL's jsonb has reordered the keys), compact, UTF-8.
    assert (
        request.body
        == json.dumps(event.payload, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert json.loads(request.body) == {"b": 1, "a": "é"}
    assert verify(request, destination.signing_secret)


def test_get_sends_the_keys_in_the_order_received(account: Account, sink: Sink) -> None:
    destination = sink_destination(account, sink, "/get", http_method="GET")
    tasks.event_accept(
        account_id=account.pk,
        event_id="get-order",
        payload={"zz": "1", "a": "2", "mm": [1]},
        size=30,
        body=b'{"zz": "1", "a": "2", "mm": [1]}',
    )
    deliver(DeliveryLog.objects.get(event__event_id="get-order"))
    [request] = sink.received()
    assert request.query_string == "zz=1&a=2&mm=%5B1%5D"
    assert verify(request, destination.signing_secret)


def test_get_signature_covers_the_raw_query_string_the_receiver_gets(
    account: Account, sink: Sink
) -> None:
    # The destination's own query holds characters requests re-encodes (STACK.md trap 16).
    destination = sink_destination(
        account, sink, "/get?t=%7E&p=a|b&e=é&l=%41&s=x%20y", http_method="GET"
    )
    log = deliver(due_log(destination, {"k": "v~|é"}))
    assert log.status == LogStatus.SUCCESS
    [request] = sink.received()
    assert request.query_string == "t=~&p=a%7Cb&e=%C3%A9&l=A&s=x%20y&k=v~%7C%C3%A9"
    assert verify(request, destination.signing_secret)


# --- webhook-id ---------------------------------------------------------------------------------

WEBHOOK_ID = re.compile(r"^msg_[0-9a-f]{32}\Z")


def test_webhook_id_is_random_unique_and_not_the_database_id(account: Account, sink: Sink) -> None:
    for path in ("/a", "/b", "/c"):
        sink_destination(account, sink, path)
    for n in range(3):
        tasks.event_accept(account_id=account.pk, event_id=f"id-{n}", payload={}, size=2)
    logs = list(DeliveryLog.objects.all())
    assert len(logs) == 9
    ids = [log.webhook_id for log in logs]
    assert all(WEBHOOK_ID.match(i) for i in ids), ids
    assert len(set(ids)) == 9
    assert not any(i == f"msg_{log.pk}" for i, log in zip(ids, logs, strict=True))
    assert not DeliveryLog.objects.values("webhook_id").annotate(n=Count("pk")).filter(n__gt=1)
    # due_log (objects.create) gets one too.
    assert WEBHOOK_ID.match(due_log(sink_destination(account, sink)).webhook_id)


def test_webhook_id_is_the_same_on_every_try(account: Account, sink: Sink) -> None:
    log = due_log(sink_destination(account, sink, "/status/500,200"))
    stored = DeliveryLog.objects.get(pk=log.pk).webhook_id
    assert deliver(log).status == LogStatus.RETRYING
    DeliveryLog.objects.filter(pk=log.pk).update(next_attempt_at=timezone.now())
    assert deliver(log).status == LogStatus.SUCCESS
    assert [r.headers["webhook-id"] for r in sink.received()] == [stored, stored]
    assert DeliveryLog.objects.get(pk=log.pk).webhook_id == stored


def test_log_shows_the_webhook_id_the_receiver_got(
    gql: GraphQL, admin: Persona, account: Account, sink: Sink
) -> None:
    log = due_log(sink_destination(account, sink))
    assert deliver(log).status == LogStatus.SUCCESS

    body = gql(
        "query ($id: ID!) { log(id: $id) { webhookId } }", {"id": str(log.pk)}, persona=admin
    )

    assert body == {"data": {"log": {"webhookId": sink.received()[0].headers["webhook-id"]}}}

"""POST /server/incoming_data/ accepted: the 202 answer, the rows it stores, the tasks it
enqueues after commit (Huey immediate: they run inline against the sink), duplicates, and
changes to destinations and secrets that must take effect on the next request."""

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest

from delivery import destinations
from delivery.models import DeliveryLog, Destination, Event, LogStatus
from identity import services as identity_services
from identity.models import Account, User
from tests.delivery.conftest import Poster, sink_destination, task_calls
from tests.factories import make_account
from tests.sink import Sink

Capture = Callable[..., AbstractContextManager[list[Callable[[], Any]]]]

PAYLOAD = {"order": 42, "status": "paid"}


def accepted(event_id: str, deliveries: int, *, duplicate: bool = False) -> dict[str, Any]:
    return {
        "success": True,
        "message": "Data Received",
        "event_id": event_id,
        "deliveries": deliveries,
        "duplicate": duplicate,
    }


@pytest.fixture
def send(
    post_incoming: Poster, app_secret: str, django_capture_on_commit_callbacks: Capture
) -> Callable[..., Any]:
    """POST `payload` with the account's token, running what is scheduled after commit."""

    def post(payload: Any = PAYLOAD, **kwargs: Any) -> Any:
        kwargs.setdefault("token", app_secret)
        with django_capture_on_commit_callbacks(execute=True):
            return post_incoming(json.dumps(payload), **kwargs)

    return post


@pytest.fixture
def two_active_one_inactive(account: Account, sink: Sink) -> list[Destination]:
    return [
        sink_destination(account, sink, "/post"),
        sink_destination(account, sink, "/get", http_method="GET"),
        sink_destination(account, sink, "/off", is_active=False),
    ]


def test_event_is_stored_once_with_one_queued_log_per_active_destination(
    send: Callable[..., Any],
    account: Account,
    two_active_one_inactive: list[Destination],
    enqueued: list[Any],
    sink: Sink,
) -> None:
    active = two_active_one_inactive[:2]

    response = send(event_id="order-42")

    assert response.status_code == 202
    assert response.json() == accepted("order-42", 2)
    event = Event.objects.get()
    assert (event.account_id, event.event_id, event.payload) == (account.pk, "order-42", PAYLOAD)
    assert event.size == len(json.dumps(PAYLOAD))
    logs = list(DeliveryLog.objects.order_by("destination_id"))
    assert [log.destination_id for log in logs] == [d.pk for d in active]
    assert {(log.event_id, log.account_id) for log in logs} == {(event.pk, account.pk)}
    # One wake for the account, which fans the event out and runs the first active
    # destination's lane itself; one lane task for the other.
    assert task_calls(enqueued, "wake_account") == [(str(account.pk),)]
    assert task_calls(enqueued) == [(d.pk, 0) for d in active[1:]]
    # Immediate mode ran the tasks after commit: both active destinations got the event.
    assert sorted(r.path for r in sink.received()) == ["/get", "/post"]
    assert {log.status for log in DeliveryLog.objects.all()} == {LogStatus.SUCCESS}


def test_event_id_is_generated_when_the_header_is_absent(
    send: Callable[..., Any], two_active_one_inactive: list[Destination]
) -> None:
    first, second = send().json(), send().json()
    assert len(first["event_id"]) == 32
    assert first == accepted(first["event_id"], 2)
    assert second["event_id"] != first["event_id"]
    assert Event.objects.count() == 2


def test_account_without_active_destinations_still_accepts(
    send: Callable[..., Any], account: Account, sink: Sink, enqueued: list[Any]
) -> None:
    sink_destination(account, sink, is_active=False)
    response = send(event_id="e1")
    assert response.status_code == 202
    assert response.json() == accepted("e1", 0)
    assert Event.objects.count() == 1
    assert DeliveryLog.objects.count() == 0
    assert enqueued == []


def test_charset_parameter_on_the_content_type_is_accepted(
    post_incoming: Poster, app_secret: str
) -> None:
    response = post_incoming(
        '{"a": 1}', token=app_secret, content_type="application/json; charset=utf-8"
    )
    assert response.status_code == 202


def test_repeated_event_id_answers_like_the_original_and_creates_nothing(
    send: Callable[..., Any],
    account: Account,
    sink: Sink,
    two_active_one_inactive: list[Destination],
    enqueued: list[Any],
) -> None:
    assert send(event_id="order-42").json() == accepted("order-42", 2)
    rows = list(DeliveryLog.objects.values_list("pk", "status", "attempt_count"))
    sent = len(sink.received())
    # A destination added since does not change the original's answer.
    sink_destination(account, sink, "/new")

    response = send({"different": True}, event_id="order-42")

    assert response.status_code == 202
    assert response.json() == accepted("order-42", 2, duplicate=True)
    assert Event.objects.get().payload == PAYLOAD
    assert list(DeliveryLog.objects.values_list("pk", "status", "attempt_count")) == rows
    assert len(task_calls(enqueued)) == 1  # the original's second lane; none for the repeat
    assert len(sink.received()) == sent


def test_same_event_id_in_another_account_is_not_a_duplicate(
    send: Callable[..., Any], two_active_one_inactive: list[Destination]
) -> None:
    _, other_secret = make_account(name="Other")
    assert send(event_id="e1").json() == accepted("e1", 2)
    assert send(event_id="e1", token=other_secret).json() == accepted("e1", 0)
    assert Event.objects.count() == 2


def test_deleted_destination_gets_no_log_on_the_next_event(
    send: Callable[..., Any],
    admin_user: User,
    two_active_one_inactive: list[Destination],
    django_capture_on_commit_callbacks: Capture,
) -> None:
    post, get, _ = two_active_one_inactive
    assert send(event_id="e1").json() == accepted("e1", 2)  # destination ids now cached
    with django_capture_on_commit_callbacks(execute=True):
        destinations.destination_delete(actor=admin_user, destination_id=post.pk)

    assert send(event_id="e2").json() == accepted("e2", 1)
    assert list(
        DeliveryLog.objects.filter(event__event_id="e2").values_list("destination_id", flat=True)
    ) == [get.pk]


def test_deactivated_and_added_destinations_take_effect_on_the_next_event(
    send: Callable[..., Any],
    account: Account,
    admin_user: User,
    sink: Sink,
    two_active_one_inactive: list[Destination],
    django_capture_on_commit_callbacks: Capture,
) -> None:
    post, get, off = two_active_one_inactive
    assert send(event_id="e1").json() == accepted("e1", 2)
    with django_capture_on_commit_callbacks(execute=True):
        destinations.destination_update(actor=admin_user, destination_id=post.pk, is_active=False)
        destinations.destination_update(actor=admin_user, destination_id=off.pk, is_active=True)
        added = destinations.destination_create(
            actor=admin_user, account_id=account.pk, url=f"{sink.url}/added", http_method="PUT"
        )

    assert send(event_id="e2").json() == accepted("e2", 3)
    assert sorted(
        DeliveryLog.objects.filter(event__event_id="e2").values_list("destination_id", flat=True)
    ) == [get.pk, off.pk, added.pk]


def test_rotated_secret_takes_effect_at_once(
    send: Callable[..., Any],
    account: Account,
    admin_user: User,
    app_secret: str,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    assert send(event_id="e1").status_code == 202  # the old secret is now cached
    with django_capture_on_commit_callbacks(execute=True):
        _, new_secret = identity_services.account_rotate_secret(
            actor=admin_user, account_id=account.pk
        )

    assert send(event_id="e2").status_code == 401
    assert send(event_id="e2", token=new_secret).json() == accepted("e2", 0)


def test_previous_secret_keeps_working_during_its_grace_period(
    send: Callable[..., Any],
    account: Account,
    admin_user: User,
    app_secret: str,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        _, new_secret = identity_services.account_rotate_secret(
            actor=admin_user, account_id=account.pk, grace_seconds=3600
        )
    assert send(event_id="old").json() == accepted("old", 0)
    assert send(event_id="new", token=new_secret).json() == accepted("new", 0)
    assert set(Event.objects.values_list("account_id", flat=True)) == {account.pk}


def _as_sent(text: str) -> str:
    """A header value as WSGI and ASGI servers hand it over: UTF-8 bytes decoded as Latin-1."""
    return text.encode("utf-8").decode("latin-1")


def test_a_non_ascii_event_id_is_stored_as_the_sender_wrote_it(
    send: Callable[..., Any],
    two_active_one_inactive: list[Destination],
    admin_user: User,
    gql: Any,
    admin: Any,
) -> None:
    event_id = "commande-été-☃"
    assert send(event_id=_as_sent(event_id)).json() == accepted(event_id, 2)
    assert Event.objects.get().event_id == event_id
    assert send(event_id=_as_sent(event_id)).json() == accepted(event_id, 2, duplicate=True)
    found = gql("query($id: ID!) { event(id: $id) { eventId } }", {"id": event_id}, persona=admin)
    assert found == {"data": {"event": {"eventId": event_id}}}
    logs = gql(
        "query($e: String) { logs(filters: {eventId: $e}) { edges { node { eventId } } } }",
        {"e": event_id},
        persona=admin,
    )
    assert logs["data"]["logs"]["edges"] == [{"node": {"eventId": event_id}}] * 2


def test_an_event_id_that_is_not_utf8_is_invalid(
    post_incoming: Poster, app_secret: str, two_active_one_inactive: list[Destination]
) -> None:
    response = post_incoming(json.dumps(PAYLOAD), token=app_secret, event_id="caf\xe9")
    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "code": "invalid_event_id",
        "message": "CL-X-EVENT-ID must be UTF-8 text.",
    }
    assert (Event.objects.count(), DeliveryLog.objects.count()) == (0, 0)

"""What the delivery path publishes to live subscribers (delivery/live.py): each change's message
carries the log's own fields as they were after it, and a lane of a destination known to answer
quickly publishes a batch's `sending` in the message of its first results. The channel layer is
the boundary: `live._group_send` is replaced by a recorder of what would be sent."""

from typing import Any

import pytest
from django.core.cache import cache

from delivery import engine, live
from delivery.models import DeliveryLog, Destination, LogStatus
from identity.models import Account
from tests.delivery.conftest import due_log, sink_destination, start
from tests.sink import Sink

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[int, str]]]:
    """(log id, status) of the updates of each message published, in order."""
    messages: list[list[tuple[int, str]]] = []

    def record(layer: Any, group: str, message: dict[str, Any]) -> None:
        if message["type"] == live.DESTINATION_MESSAGE:
            return  # the destination's health figures (tests/live/test_destination_updates.py)
        assert message["type"] == live.MESSAGE_TYPE
        messages.append([(u["log_id"], u["status"]) for u in message["updates"]])

    monkeypatch.setattr(live, "_group_send", record)
    return messages


@pytest.fixture
def destination(account: Account, sink: Sink) -> Destination:
    return sink_destination(account, sink)


def test_a_destination_of_unknown_pace_publishes_sending_at_the_claim(
    destination: Destination, sent: list[list[tuple[int, str]]]
) -> None:
    log = due_log(destination)
    assert cache.get(f"pace:{destination.pk}") is None

    start(destination)

    assert sent == [[(log.pk, "sending")], [(log.pk, "success")]]


def test_a_quick_destination_publishes_sending_with_the_first_results(
    destination: Destination, sent: list[list[tuple[int, str]]]
) -> None:
    due_log(destination)
    start(destination)  # its first send: the destination's pace is now known, fast
    assert cache.get(f"pace:{destination.pk}") == engine.FAST
    sent.clear()
    logs = [due_log(destination) for _ in range(3)]

    start(destination)

    assert sent == [[(log.pk, "sending") for log in logs] + [(log.pk, "success") for log in logs]]
    assert [log.status for log in DeliveryLog.objects.order_by("pk")][1:] == [LogStatus.SUCCESS] * 3


def test_a_quick_destinations_unsent_rest_is_published_sending_then_given_back(
    destination: Destination, sent: list[list[tuple[int, str]]], settings: Any
) -> None:
    due_log(destination)
    start(destination)
    sent.clear()
    first, second = due_log(destination), due_log(destination)
    settings.DELIVERY_LANE_SLICE_SECONDS = 0.000001  # the slice ends after the first send

    run = start(destination)

    assert run.again
    assert sent == [
        [(first.pk, "sending"), (second.pk, "sending"), (first.pk, "success")],
        [(second.pk, "queued")],
    ]


def test_the_message_carries_the_logs_fields_after_the_change(
    destination: Destination, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages: list[dict[str, Any]] = []
    monkeypatch.setattr(live, "_group_send", lambda layer, group, m: messages.append(m))
    log = due_log(destination, payload={"order": 1})

    start(destination)

    log.refresh_from_db()
    *_, last = (u for m in messages if m["type"] == live.MESSAGE_TYPE for u in m["updates"])
    assert last == {
        "log_id": log.pk,
        "account_id": str(log.account_id),
        "destination_id": destination.pk,
        "event_id": log.event_id,
        "event": log.event.event_id,
        "status": "success",
        "attempt_count": 1,
        "updated_at": log.updated_at.isoformat(),
        "webhook_id": log.webhook_id,
        "received_timestamp": log.received_timestamp.isoformat(),
        "processed_timestamp": log.processed_timestamp.isoformat(),
        "next_attempt_at": None,
        "last_status_code": 200,
        "last_error": "",
    }
    row = live._row(last)
    for name in ("pk", "status", "attempt_count", "webhook_id", "last_status_code"):
        assert getattr(row, name) == getattr(log, name)
    assert (row.account_id, row.event.event_id) == (log.account_id, log.event.event_id)
    assert (row.received_timestamp, row.processed_timestamp, row.updated_at) == (
        log.received_timestamp,
        log.processed_timestamp,
        log.updated_at,
    )

"""Per-destination limits: a 429 with Retry-After holds the whole lane (not only the log that
got it) without spending the other logs' tries, and a rate limit spaces a destination's
requests (across worker processes: tests/faults/test_rate_limit.py)."""

import time
from typing import Any

import pytest
from django.utils import timezone

from delivery import limits
from delivery.models import DeliveryLog, LogStatus
from identity.models import Account
from tests.delivery.conftest import due_log, sink_destination, start
from tests.sink import Sink

pytestmark = pytest.mark.django_db(transaction=True)


def test_429_with_retry_after_holds_the_lane(account: Account, sink: Sink) -> None:
    destination = sink_destination(account, sink, "/status/429,200?retry_after=1")
    logs = [due_log(destination) for _ in range(3)]

    before = timezone.now()
    run = start(destination)

    assert run.sent == 1
    assert run.wake_at is not None
    assert 0.9 <= (run.wake_at - before).total_seconds() <= 2.0
    stored = DeliveryLog.objects.in_bulk([log.pk for log in logs])
    assert [(stored[log.pk].status, stored[log.pk].attempt_count) for log in logs] == [
        (LogStatus.RETRYING, 1),
        (LogStatus.QUEUED, 0),
        (LogStatus.QUEUED, 0),
    ]
    # Until Retry-After has passed, a lane sends nothing.
    assert start(destination).sent == 0
    assert len(sink.received()) == 1

    time.sleep(max(0.0, (run.wake_at - timezone.now()).total_seconds()) + 0.01)
    assert start(destination).sent == 2  # the 429'd log waits for its own retry (5 s)
    assert [r.headers["webhook-id"] for r in sink.received()[1:]] == [
        log.webhook_id for log in logs[1:]
    ]


def test_rate_limit_spaces_the_requests(account: Account, sink: Sink, settings: Any) -> None:
    settings.DELIVERY_LANE_SLICE_SECONDS = 30
    destination = sink_destination(account, sink)
    destination.rate_limit = 20
    destination.save()
    for _ in range(8):
        due_log(destination)

    assert start(destination).sent == 8

    arrivals = [r.at for r in sink.received()]
    # 20 per second: two at once after the pause, then six slots 50 ms apart (a late one
    # keeps the next slot where it was, so single gaps may be shorter; the span may not).
    assert arrivals[-1] - arrivals[0] >= 6 * 0.05 - 0.005, arrivals


def test_reserve_counts_only_what_goes(account: Account, sink: Sink) -> None:
    destination = sink_destination(account, sink)
    # After a pause two may go at once; then one per 1/rate.
    assert limits.reserve(destination.pk, 2.0) == 0.0
    assert limits.reserve(destination.pk, 2.0) == 0.0
    wait = limits.reserve(destination.pk, 2.0)
    assert 0.4 < wait <= 0.5
    # Asking again does not push the slot further away.
    assert limits.reserve(destination.pk, 2.0) <= wait


def test_a_slow_rate_gives_the_thread_back_until_the_next_slot(
    account: Account, sink: Sink
) -> None:
    destination = sink_destination(account, sink)
    destination.rate_limit = 2
    destination.save()
    logs = [due_log(destination) for _ in range(3)]

    before = timezone.now()
    run = start(destination)

    assert run.sent == 2  # two at once after a pause, the third in 0.5 s
    assert run.wake_at is not None
    assert 0.3 <= (run.wake_at - before).total_seconds() <= 0.6
    stored = DeliveryLog.objects.in_bulk([log.pk for log in logs])
    assert [(stored[log.pk].status, stored[log.pk].attempt_count) for log in logs] == [
        (LogStatus.SUCCESS, 1),
        (LogStatus.SUCCESS, 1),
        (LogStatus.QUEUED, 0),
    ]

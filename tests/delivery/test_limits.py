"""Per-destination limits: a 429 with Retry-After holds the whole lane (not only the log that
got it) without spending the other logs' tries, and a rate limit spaces a destination's
requests (across worker processes: tests/faults/test_rate_limit.py)."""

import time
from typing import Any

import pytest
from django.core.cache import cache
from django.utils import timezone

from delivery import engine, health, limits, policy
from delivery.models import DeliveryLog, Destination, LogStatus
from identity.models import Account
from tests.conftest import GraphQL, Persona
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


def test_reserve_grants_the_slots_within_the_horizon(account: Account, sink: Sink) -> None:
    destination = sink_destination(account, sink)
    # After a pause the first slot is one spacing back (a burst of two), then every 0.1 s.
    grant = limits.reserve(destination.pk, 10.0, 5, 0.25)
    assert grant.count == 4  # due at -0.1, 0, 0.1 and 0.2 s
    assert -0.11 <= grant.first <= -0.09
    # The next free slot is 0.3 s away: none within 0.25 s, nothing reserved.
    refused = limits.reserve(destination.pk, 10.0, 5, 0.25)
    assert refused.count == 0
    assert 0.25 < refused.first <= 0.3
    assert limits.reserve(destination.pk, 10.0, 1, 0.25).count == 0


def test_a_reservation_renews_the_lane_slot_in_its_round_trip(account: Account, sink: Sink) -> None:
    destination = sink_destination(account, sink)
    slot = policy.lane_slot_key(destination.pk, 0)
    cache.set(slot, 1, timeout=1)

    grant = limits.reserve(destination.pk, 10.0, 2, 0.25, renew=(slot, 60))

    assert grant.count == 2
    time.sleep(1.2)
    assert cache.get(slot) == 1  # renewed: it would have expired after 1 s


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


ACCOUNT_LIMITS = """mutation ($id: ID!, $input: AccountUpdateInput!) {
    accountUpdate(id: $id, input: $input) { ... on Account { defaultMaxInFlight defaultRateLimit }
    ... on OperationInfo { messages { code field } } } }"""


def test_account_defaults_apply_to_destinations_without_their_own(
    account: Account, sink: Sink, gql: GraphQL, admin: Persona
) -> None:
    destination = sink_destination(account, sink)
    due_log(destination)
    assert start(destination).sent == 1  # no limit yet; the lane's worker has a copy now
    answer = gql(
        ACCOUNT_LIMITS,
        {"id": str(account.pk), "input": {"defaultRateLimit": 2, "defaultMaxInFlight": 3}},
        persona=admin,
    )
    assert answer["data"]["accountUpdate"] == {"defaultMaxInFlight": 3, "defaultRateLimit": 2}
    logs = [due_log(destination) for _ in range(3)]

    run = start(destination)

    # The copy was loaded again (the account's change moved the destination's updated_at).
    assert run.sent == 2  # two at once after a pause, then 2/s: the third waits
    assert run.wake_at is not None
    copy = engine.destination_copies.get(destination.pk)
    assert copy is not None
    assert policy.max_in_flight(copy) == 3
    assert DeliveryLog.objects.get(pk=logs[2].pk).status == LogStatus.QUEUED
    (figures,) = health.figures([Destination.objects.get(pk=destination.pk)])
    assert figures.in_flight == 0


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("defaultMaxInFlight", 101, "invalid_max_in_flight"),
        ("defaultRateLimit", 10_001, "invalid_rate_limit"),
    ],
)
def test_account_defaults_out_of_range_write_nothing(
    account: Account, gql: GraphQL, admin: Persona, field: str, value: int, code: str
) -> None:
    before = Account.objects.values().get(pk=account.pk)
    answer = gql(
        ACCOUNT_LIMITS, {"id": str(account.pk), "input": {field: value, "name": "X"}}, persona=admin
    )
    assert answer["data"]["accountUpdate"] == {"messages": [{"code": code, "field": field}]}
    assert Account.objects.values().get(pk=account.pk) == before

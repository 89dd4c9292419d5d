"""destinationUpdates through the real ASGI application with the configured channel layer:
breaker transitions and figures arrive live, and `since` replays the notices missed."""

from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from delivery import health
from delivery.live import destination_group
from delivery.models import Destination
from delivery.transport import Kind, Outcome
from identity.models import Account
from tests.conftest import Persona
from tests.delivery.conftest import sink_destination
from tests.live.conftest import connect, wait_subscribed
from tests.sink import Sink

pytestmark = pytest.mark.django_db(transaction=True)

SUBSCRIPTION = """
subscription ($accountId: ID, $since: DateTime) {
  destinationUpdates(accountId: $accountId, since: $since) {
    destination { id health { state attempts1h } }
    notice { kind }
  }
}"""
FAIL = Outcome(Kind.TRANSIENT, 30, status_code=500)
OK = Outcome(Kind.SUCCESS, 20, status_code=200)


def observe(destination: Destination, outcomes: list[Outcome], **kw: Any) -> None:
    for outcome in outcomes:
        health.observe(destination, [outcome], **kw)


async def updates(client: Any, count: int) -> list[dict[str, Any]]:
    return [(await client.next_data())["destinationUpdates"] for _ in range(count)]


async def test_transitions_and_figures_arrive_live(
    account: Account, normal_user: Persona, sink: Sink
) -> None:
    destination = await sync_to_async(sink_destination)(account, sink)
    client, _, _ = await connect()
    assert await client.init(normal_user.token) == {"type": "connection_ack"}
    await client.subscribe(SUBSCRIPTION, {"accountId": str(account.pk)})
    await wait_subscribed(account.pk, group_of=destination_group)
    now = timezone.now()

    # The first try's figures (then none for a second), and the opening as a notice.
    await sync_to_async(observe)(destination, [FAIL] * 10, now=now)

    figures, opened = await updates(client, 2)
    assert figures["notice"] is None
    assert figures["destination"]["id"] == str(destination.pk)
    assert opened == {
        "destination": {"id": str(destination.pk), "health": {"state": "OPEN", "attempts1h": 10}},
        "notice": {"kind": "BREAKER_OPENED"},
    }
    assert await client.nothing_pending()
    await client.close()


async def test_since_replays_missed_notices_then_goes_live(
    account: Account, admin: Persona, sink: Sink
) -> None:
    destination = await sync_to_async(sink_destination)(account, sink)
    before = timezone.now() - timedelta(seconds=1)
    now = timezone.now()
    await sync_to_async(observe)(destination, [FAIL] * 10, now=now)  # opened, while away
    client, _, _ = await connect()
    assert await client.init(admin.token) == {"type": "connection_ack"}

    await client.subscribe(SUBSCRIPTION, {"since": before.isoformat()})
    (replayed,) = await updates(client, 1)
    assert replayed["notice"] == {"kind": "BREAKER_OPENED"}
    await wait_subscribed(account.pk, group_of=destination_group)
    # The probe succeeds 30 s on: its figures, then the closing, live; the opening once only.
    await sync_to_async(observe)(destination, [OK], now=now + timedelta(seconds=30), probe=True)

    figures, closed = await updates(client, 2)
    assert figures["notice"] is None
    assert closed["notice"] == {"kind": "BREAKER_CLOSED"}
    # Closed, and DEGRADED while the failures are in the last 5 minutes.
    assert closed["destination"]["health"]["state"] == "DEGRADED"
    assert await client.nothing_pending()
    await client.close()

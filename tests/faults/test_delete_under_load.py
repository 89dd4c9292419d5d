"""Deleting an account or a destination while a burst of events for that account arrives at a
real server (the deployment of this run: daphne + run_huey on PostgreSQL/Redis, or
`manage.py serve` on SQLite).

What must hold: the delete succeeds on its first call; every ingest either lands before the
delete (202) or, once the account is gone, answers 401 — never a 500 or an HTML page; and no
row of a deleted account, and no log pointing at a deleted destination, remains.
(Before: on PostgreSQL the cascade collected rows in Python while ingests kept committing, so
the delete failed at commit with a foreign-key violation or a deadlock, and the ingests that
lost the deadlock got 500s.)"""

import threading
import time
from collections import Counter
from typing import Any

import pytest
import requests
from django.db import connection
from django.utils import timezone

from delivery import destinations
from delivery.models import DeliveryLog, Destination, Event
from identity import services as identity_services
from identity.models import Account
from tests.conftest import Persona, Service
from tests.delivery.conftest import sink_destination
from tests.faults.conftest import post_event
from tests.sink import Sink

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SENDERS = 8
BACKLOG = 2000  # events already stored: the cascade has work to do while ingests arrive


class Burst:
    """SENDERS threads posting events for one account until stopped."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.statuses: Counter[int] = Counter()
        self.bodies: list[Any] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._send, args=(n,)) for n in range(SENDERS)]
        self._lock = threading.Lock()

    def _send(self, sender: int) -> None:
        session = requests.Session()
        n = 0
        while not self.stop.is_set():
            n += 1
            response = post_event(session, self.url, self.token, f"s{sender}-{n}", {"n": n})
            with self._lock:
                self.statuses[response.status_code] += 1
                if response.status_code not in (202, 401):
                    self.bodies.append(response.text[:300])

    def __enter__(self) -> "Burst":
        for thread in self.threads:
            thread.start()
        return self

    def wait_for_accepted(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.statuses[202] < count:
            assert time.monotonic() < deadline, f"only {self.statuses} after {timeout}s"
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def _backlog(account: Account, destinations: list[Destination]) -> None:
    now = timezone.now()
    events = Event.objects.bulk_create(
        Event(account=account, event_id=f"old-{n}", payload={"n": n}, size=8, received_at=now)
        for n in range(BACKLOG)
    )
    DeliveryLog.objects.bulk_create(
        DeliveryLog(
            event=event,
            destination=destination,
            account=account,
            status="success",
            received_timestamp=now,
            updated_at=now,
        )
        for event in events
        for destination in destinations
    )


def test_account_delete_during_a_burst_succeeds_and_ingests_get_202_or_401(
    service: Service, account: Account, admin: Persona, app_secret: str, sink: Sink
) -> None:
    destinations = [sink_destination(account, sink, f"/d{n}") for n in range(2)]
    _backlog(account, destinations)
    with Burst(service.url, app_secret) as burst:
        burst.wait_for_accepted(50)
        identity_services.account_delete(actor=admin.user, account_id=account.pk)
        deleted_at = sum(burst.statuses.values())
        while sum(burst.statuses.values()) < deleted_at + 4 * SENDERS:  # ingests after it
            time.sleep(0.01)
    assert set(burst.statuses) == {202, 401}, (burst.statuses, burst.bodies[:3])
    assert not Account.objects.filter(pk=account.pk).exists()
    assert Event.objects.filter(account_id=account.pk).count() == 0
    assert DeliveryLog.objects.filter(account_id=account.pk).count() == 0
    assert Destination.objects.filter(account_id=account.pk).count() == 0


def test_destination_delete_during_a_burst_succeeds_and_every_ingest_lands(
    service: Service, account: Account, admin: Persona, app_secret: str, sink: Sink
) -> None:
    kept, doomed = (sink_destination(account, sink, f"/d{n}") for n in range(2))
    _backlog(account, [kept, doomed])
    with Burst(service.url, app_secret) as burst:
        burst.wait_for_accepted(50)
        destinations.destination_delete(actor=admin.user, destination_id=doomed.pk)
        accepted_at_delete = burst.statuses[202]
        burst.wait_for_accepted(accepted_at_delete + 4 * SENDERS)
    assert set(burst.statuses) == {202}, (burst.statuses, burst.bodies[:3])
    assert not Destination.objects.filter(pk=doomed.pk).exists()
    assert DeliveryLog.objects.filter(destination_id=doomed.pk).count() == 0
    # Every accepted event gets its log to the destination that stayed, once fanned out.
    deadline = time.monotonic() + 30
    while Event.objects.filter(account=account, fanned_out_at=None).exists():
        assert time.monotonic() < deadline, "events still waiting for their fan-out after 30 s"
        time.sleep(0.05)
    events = Event.objects.filter(account=account).count()
    assert events == BACKLOG + burst.statuses[202]
    assert DeliveryLog.objects.filter(destination=kept).count() == events
    connection.close()

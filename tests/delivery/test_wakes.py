"""Wakes by NOTIFY (PostgreSQL): an accepted event's own statement notifies the workers at
commit (delivery/ingest.py), and each worker process's listener (delivery/wakes.py) wakes the
notified accounts, and on every (re)connect the accounts whose events are still pending."""

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection, connections
from django.test import override_settings
from django.utils import timezone

from delivery import engine, ingest, wakes
from delivery.models import Event
from identity.models import Account
from tests.delivery.conftest import Poster
from tests.factories import make_account, make_destination

pytestmark = [
    pytest.mark.django_db(transaction=True),  # NOTIFY is delivered at commit
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="LISTEN/NOTIFY: DATABASE_URL is not set"
    ),
]

PAYLOAD = json.dumps({"order": 42})


@pytest.fixture
def listening() -> Iterator[psycopg.Connection[Any]]:
    """A connection LISTENing on the wake channel, as a worker's listener does."""
    params = connections["default"].get_connection_params()
    with psycopg.connect(**params, autocommit=True) as listener:
        listener.execute(f"LISTEN {ingest.WAKE_CHANNEL}")
        yield listener


def notified(listener: psycopg.Connection[Any]) -> list[str]:
    return [n.payload for n in listener.notifies(timeout=0.5)]


def with_destinations(count: int) -> tuple[Account, str]:
    account, secret = make_account()
    for _ in range(count):
        make_destination(account)
    return account, secret


@override_settings(DELIVERY_WAKE_NOTIFY=True)
def test_an_accepted_event_notifies_its_account_and_sets_no_wake_flag(
    post_incoming: Poster, real_queue: Any, listening: psycopg.Connection[Any]
) -> None:
    account, secret = with_destinations(2)

    response = post_incoming(PAYLOAD, token=secret)

    assert response.status_code == 202, response.content
    assert notified(listening) == [str(account.pk)]
    assert engine.wake_flag(str(account.pk))  # it was not set: the listener sets it
    assert real_queue.pending_count() == 0
    assert Event.objects.get(account=account).fanned_out_at is None


@pytest.mark.parametrize(
    ("destinations", "immediate", "setting"),
    [
        pytest.param(0, False, True, id="nothing-to-fan-out"),
        pytest.param(2, True, True, id="no-workers-immediate-mode"),
        pytest.param(2, False, False, id="setting-off-the-default"),
    ],
)
def test_no_notification_without_a_fan_out_or_listening_workers(
    post_incoming: Poster,
    real_queue: Any,
    listening: psycopg.Connection[Any],
    destinations: int,
    immediate: bool,
    setting: bool,
) -> None:
    _account, secret = with_destinations(destinations)
    real_queue.immediate = immediate

    with override_settings(DELIVERY_WAKE_NOTIFY=setting):
        response = post_incoming(PAYLOAD, token=secret)

    assert response.status_code == 202, response.content
    assert notified(listening) == []


class Listener:
    """delivery.wakes.listen in a thread, recording each batch of accounts it wakes."""

    def __init__(self) -> None:
        self.batches: list[set[str]] = []
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.woken = threading.Condition()
        self.gate = threading.Event()  # cleared: the next wake blocks until it is set
        self.gate.set()
        self.thread = threading.Thread(
            target=wakes.listen, args=(self.wake, self.stop), kwargs={"ready": self.ready}
        )

    def wake(self, accounts: set[str]) -> None:
        with self.woken:
            self.batches.append(set(accounts))
            self.woken.notify_all()
        assert self.gate.wait(timeout=10)

    def seen(self) -> set[str]:
        return set().union(*self.batches)

    def wait_for(self, accounts: set[str]) -> None:
        with self.woken:
            assert self.woken.wait_for(lambda: accounts <= self.seen(), timeout=10), self.batches


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    monkeypatch.setattr(wakes, "WAIT_SECONDS", 0.2)  # notices `stop` sooner
    running = Listener()
    yield running
    running.stop.set()
    if running.thread.ident is not None:
        running.thread.join(timeout=wakes.WAIT_SECONDS + 5)
        assert not running.thread.is_alive()


def event(account: Account, *, pending: bool = True) -> Event:
    now = timezone.now()
    return Event.objects.create(
        account=account,
        event_id=uuid.uuid4().hex,
        payload={},
        size=2,
        received_at=now,
        fanned_out_at=None if pending else now,
    )


def notify(*account_ids: str) -> None:
    with connection.cursor() as cursor:
        for account_id in account_ids:
            cursor.execute("SELECT pg_notify(%s, %s)", [ingest.WAKE_CHANNEL, account_id])


def test_the_listener_wakes_pending_accounts_first_then_the_notified_ones(
    listener: Listener,
) -> None:
    pending, _ = make_account()
    event(pending)
    done, _ = make_account()
    event(done, pending=False)

    listener.thread.start()
    assert listener.ready.wait(timeout=10)
    assert listener.batches == [{str(pending.pk)}]

    # While the listener wakes one account, three events of two more commit (three
    # transactions): its next batch wakes each of them once.
    busy, first, second = (str(make_account()[0].pk) for _ in range(3))
    listener.gate.clear()
    notify(busy)
    listener.wait_for({busy})
    notify(first, second, first)
    listener.gate.set()
    listener.wait_for({first, second})
    assert listener.batches == [{str(pending.pk)}, {busy}, {first, second}]


def test_the_listener_listens_again_after_its_connection_is_cut(listener: Listener) -> None:
    listener.thread.start()
    assert listener.ready.wait(timeout=10)
    assert listener.batches == [set()]
    listener.ready.clear()

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE %s",
            [f"LISTEN {ingest.WAKE_CHANNEL}%"],
        )
        assert cursor.fetchall() == [(True,)]
    # Accepted while nobody listened: the notification is lost, the reconnect finds it.
    account, _ = make_account()
    event(account)

    assert listener.ready.wait(timeout=wakes.WAIT_SECONDS + wakes.RETRY_SECONDS + 10)
    listener.wait_for({str(account.pk)})

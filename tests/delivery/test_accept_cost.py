"""Issue 9, target 2: what one accepted event costs does not grow with its destinations.

For accounts with 1, 10 and 50 active destinations, one POST to incoming_data (after a first
one warmed the caches: app secret, destination ids, connections) is measured: the SQL
statements on the default database, and (with REDIS_URL) the Redis round trips of every
redis-py client in this process, sync and asyncio alike — the Django cache, Huey's storage and
the channel layer, which publishes from delivery/live.py's publisher thread. Each is compared
with the same measure for an account with one destination, and with the exact list of what it
costs today (SQL, REDIS below).

The queue is real (the `real_queue` fixture: Huey's own storage instead of immediate mode), so
the account's wake is enqueued and not run inline, and an enqueue costs what it costs in production
(with Redis: one round trip, counted like any other). Transactions are real
(`django_db(transaction=True)`): BEGIN and COMMIT are counted, and what runs after commit
runs inside the measure."""

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest
import redis.asyncio.connection
import redis.connection
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from delivery import engine, ingest, live, tasks
from delivery.models import DeliveryLog, Event, LogStatus
from tests.delivery.conftest import Poster, task_calls
from tests.factories import make_account, make_destination

pytestmark = pytest.mark.django_db(transaction=True)

DESTINATIONS = [1, 10, 50]
PAYLOAD = {"order": 42, "status": "paid"}

# What an accepted event costs today, whatever the number of its destinations: the event
# alone, pending its fan-out by a worker, and the count of destinations for the answer.
# PostgreSQL: one statement in autocommit (delivery/ingest.py); SQLite: a transaction of two.
SQL = (
    ["WITH d AS"]
    if connection.vendor == "postgresql"
    else ["BEGIN", "SELECT COUNT(*) AS", 'INSERT INTO "delivery_event"', "COMMIT"]
)
REDIS = [
    # (the app secret's account: kept in the process since the warm-up, APP_SECRET_LOCAL_SECONDS)
    "SET",  # the rate limit's window (cache.add) ...
    "EXISTS",  # ... and its count (cache.incr: two round trips)
    "INCRBY",
    # after commit (unless DELIVERY_WAKE_NOTIFY on PostgreSQL: tests/delivery/test_wakes.py):
    "SET",  # the account's wake flag (cache.add) ...
    "ZADD",  # ... set, so one wake_account task (the fan-out) is enqueued (Huey's priority queue)
]


def _command_name(command: Any) -> str:
    """The name of the first command of a packed RESP request (a pipeline sends several)."""
    if isinstance(command, str):
        command = command.encode()
    data = command if isinstance(command, bytes) else b"".join(command)
    lines = data.split(b"\r\n")
    name = lines[2].decode(errors="replace").upper() if len(lines) > 2 else "?"
    commands = sum(1 for line in lines if line.startswith(b"*"))
    return name if commands <= 1 else f"{name} (+{commands - 1} pipelined)"


def _statement(sql: str) -> str:
    """What a statement does, for comparing (SQLite begins with BEGIN IMMEDIATE)."""
    return "BEGIN" if sql.startswith("BEGIN") else " ".join(sql.split()[:3])


@contextmanager
def redis_round_trips() -> Iterator[list[str]]:
    """Every request redis-py sends to a server while inside, from any thread and any event
    loop: one entry (the first command's name) per round trip — a pipeline is one."""
    sent: list[str] = []
    lock = threading.Lock()
    sync_connection = redis.connection.AbstractConnection
    async_connection = redis.asyncio.connection.AbstractConnection
    sync_send = sync_connection.send_packed_command
    async_send = async_connection.send_packed_command

    def send(self: Any, command: Any, check_health: bool = True) -> None:
        with lock:
            sent.append(_command_name(command))
        sync_send(self, command, check_health)

    async def send_async(self: Any, command: Any, check_health: bool = True) -> None:
        with lock:
            sent.append(_command_name(command))
        await async_send(self, command, check_health)

    with (
        mock.patch.object(sync_connection, "send_packed_command", send),
        mock.patch.object(async_connection, "send_packed_command", send_async),
    ):
        yield sent


def publisher_idle() -> None:
    """Wait until the live publisher's event loop has finished everything it was given: the
    channel layer's sends run there, on another thread. (live.publish waits for its send
    today; this keeps the count right should a publish ever be left running.)"""
    loop = live._publisher_loop()

    async def others_done() -> None:
        current = asyncio.current_task()
        others = [task for task in asyncio.all_tasks() if task is not current]
        if others:
            await asyncio.wait(others, timeout=5)

    asyncio.run_coroutine_threadsafe(others_done(), loop).result(timeout=10)


@dataclass
class Cost:
    """What one accepted event cost: the SQL statements and the Redis round trips."""

    sql: list[str]
    redis: list[str]


Measure = Callable[[int], Cost]


@pytest.fixture
def measure(post_incoming: Poster, real_queue: Any, settings: Any) -> Measure:
    """A new account with `destinations` active destinations; one POST warms the caches, the
    next one is measured. Asserts that it was accepted pending its fan-out (the queue is not
    consumed), and that the fan-out then makes one `queued` log per destination."""

    settings.APP_SECRET_LOCAL_SECONDS = 60  # longer than any pause between the two POSTs

    def cost(destinations: int) -> Cost:
        account, secret = make_account()
        for _ in range(destinations):
            make_destination(account)
        warm = post_incoming(json.dumps(PAYLOAD), token=secret, event_id="warm")
        assert warm.status_code == 202, warm.content
        if settings.REDIS_URL:
            publisher_idle()
        # The worst case: no wake of the account's lanes pending (nothing consumes the queue
        # here), so the measured event enqueues one too.
        engine.clear_wake_flag(account.pk)
        with CaptureQueriesContext(connection) as queries, redis_round_trips() as trips:
            response = post_incoming(json.dumps(PAYLOAD), token=secret, event_id="measured")
            if settings.REDIS_URL:
                publisher_idle()
        assert response.status_code == 202, response.content
        assert response.json()["deliveries"] == destinations
        event = Event.objects.get(account=account, event_id="measured")
        assert (event.fanned_out_at, event.logs.count()) == (None, 0)
        fanned = ingest.fan_out(account.pk, destinations)
        assert [(log.event_id, log.status) for log in fanned.logs][-destinations:] == [
            (event.pk, LogStatus.QUEUED)
        ] * destinations
        statuses = event.logs.values_list("status", flat=True)
        assert list(statuses) == [LogStatus.QUEUED] * destinations
        return Cost([query["sql"] for query in queries.captured_queries], list(trips))

    return cost


@pytest.mark.parametrize("destinations", DESTINATIONS, ids=lambda n: f"{n}-destinations")
def test_sql_statements_of_an_accepted_event_do_not_grow_with_destinations(
    measure: Measure, destinations: int
) -> None:
    one = measure(1)
    many = measure(destinations)
    one_count, many_count = len(one.sql), len(many.sql)
    print(f"\nSQL statements: 1 destination {one_count}, {destinations}: {many_count}")
    assert many_count == one_count, "\n".join(
        ["1 destination:", *one.sql, f"{destinations} destinations:", *many.sql]
    )
    assert [_statement(sql) for sql in many.sql] == SQL


@pytest.mark.services
@pytest.mark.skipif(not settings.REDIS_URL, reason="counts Redis round trips: REDIS_URL is not set")
@pytest.mark.parametrize("destinations", DESTINATIONS, ids=lambda n: f"{n}-destinations")
def test_redis_round_trips_of_an_accepted_event_do_not_grow_with_destinations(
    measure: Measure, destinations: int
) -> None:
    one = measure(1)
    many = measure(destinations)
    report = (
        f"Redis round trips: 1 destination {len(one.redis)} {dict(Counter(one.redis))}; "
        f"{destinations}: {len(many.redis)} {dict(Counter(many.redis))}"
    )
    print(f"\n{report}")
    one_count, many_count = len(one.redis), len(many.redis)
    assert many_count == one_count, report
    assert many.redis == REDIS


@pytest.mark.parametrize("events", [1, 20], ids=lambda n: f"{n}-events")
def test_one_fan_out_is_one_statement_on_postgresql_whatever_the_events(events: int) -> None:
    account, _ = make_account()
    destinations = [make_destination(account) for _ in range(10)]
    for n in range(events):
        ingest.event_ingest(account_id=account.pk, event_id=f"e{n}", payload={"n": n}, size=8)
    with CaptureQueriesContext(connection) as queries:
        fanned = ingest.fan_out(account.pk, len(destinations))
    expected = (
        ["WITH pending AS"]
        if connection.vendor == "postgresql"
        else [
            "BEGIN",
            'SELECT "delivery_event"."id" AS',
            'UPDATE "delivery_event" SET',
            'SELECT "delivery_destination"."id" AS',
            'INSERT INTO "delivery_deliverylog"',
            "COMMIT",
        ]
    )
    statements = [_statement(query["sql"]) for query in queries.captured_queries]
    if connection.vendor != "postgresql":  # the ORM splits a bulk insert by SQLite's limits
        statements = [s for i, s in enumerate(statements) if i == 0 or s != statements[i - 1]]
    assert statements == expected
    order = [(log.event_id, log.destination_id) for log in fanned.logs]
    by_event = Event.objects.filter(account=account).order_by("id").values_list("id", flat=True)
    assert order == [(e, d.pk) for e in by_event for d in destinations]
    assert fanned.more is False
    assert not Event.objects.filter(account=account, fanned_out_at=None).exists()


def test_a_wake_fans_out_a_few_batches_then_wakes_the_account_again(
    monkeypatch: pytest.MonkeyPatch, enqueued: list[Any]
) -> None:
    # One event per batch (FAN_OUT_ROWS 2, two destinations); seven pending events.
    monkeypatch.setattr(ingest, "FAN_OUT_ROWS", 2)
    monkeypatch.setattr(engine, "lanes_to_start", lambda ids: [])  # no delivery here
    account, _ = make_account()
    destinations = [make_destination(account) for _ in range(2)]
    for n in range(7):
        ingest.event_ingest(account_id=account.pk, event_id=f"e{n}", payload={"n": n}, size=8)

    tasks.wake_account(str(account.pk))  # immediate mode: the second wake runs inline

    assert task_calls(enqueued, "wake_account") == [(str(account.pk),)] * 2
    assert not Event.objects.filter(account=account, fanned_out_at=None).exists()
    events = list(Event.objects.filter(account=account).order_by("id"))
    logs = DeliveryLog.objects.filter(account=account).order_by("id")
    assert [(log.event_id, log.destination_id) for log in logs] == [
        (e.pk, d.pk) for e in events for d in destinations
    ]
    assert {log.received_timestamp for log in logs} == {e.received_at for e in events}

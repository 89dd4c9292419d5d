"""Fixtures of the delivery GraphQL tests. No test here sends HTTP: `tasks.wake_destinations`
(what a mutation enqueues) is replaced by a recorder, so a test can assert exactly which lanes
would have been woken."""

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from delivery import tasks
from delivery.models import DeliveryLog, Destination, Event
from identity.models import Account
from tests.conftest import Persona
from tests.factories import make_attempt, make_destination, make_event, make_log


class Dispatched(list[list[int | None]]):
    """The destination ids of each `tasks.wake_destinations` call that named any, in order."""


@pytest.fixture(autouse=True)
def dispatched(monkeypatch: pytest.MonkeyPatch) -> Dispatched:
    calls = Dispatched()

    def record(destination_ids: Iterable[int | None]) -> None:
        if ids := list(destination_ids):
            calls.append(ids)

    monkeypatch.setattr(tasks, "wake_destinations", record)
    return calls


@pytest.fixture
def after_commit(
    django_capture_on_commit_callbacks: Callable[..., AbstractContextManager[list[Any]]],
) -> Callable[[], AbstractContextManager[list[Any]]]:
    """`with after_commit() as callbacks:` runs what the code scheduled with on_commit (tests
    run inside a transaction that never commits) and lists it."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture
def other_account(outsider: Persona) -> Account:
    """The account the outsider administers."""
    return Account.objects.get(name="Other")


@pytest.fixture
def destination(account: Account) -> Destination:
    """A destination of Acme (the account of admin and normal_user)."""
    return make_destination(account, "http://127.0.0.1:9/acme", headers={"X-Key": "1"})


T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


@dataclass
class World:
    """Acme: destinations one and two, events order-1..3 and logs a..f; Other: log g of an
    event that reuses the id order-1."""

    one: Destination
    two: Destination
    other: Destination
    events: dict[str, Event]
    logs: dict[str, DeliveryLog]

    def ids(self, names: str) -> list[str]:
        return [str(self.logs[name].pk) for name in names]


@pytest.fixture
def world(account: Account, other_account: Account) -> World:
    one = make_destination(account, "http://127.0.0.1:9/one")
    two = make_destination(account, "http://127.0.0.1:9/two", http_method="GET")
    other = make_destination(other_account, "http://127.0.0.1:9/other")
    e1 = make_event(account, "order-1", {"order": 1}, received_at=at(0))
    e2 = make_event(account, "order-2", {"order": 2}, received_at=at(10))
    e3 = make_event(account, "order-3", {"order": 3}, received_at=at(20))
    eo = make_event(other_account, "order-1", {"secret": "other"}, received_at=at(5))
    logs = {
        "a": make_log(
            e1, one, "success", attempt_count=1, last_status_code=200, processed_timestamp=at(1)
        ),
        "b": make_log(
            e1,
            two,
            "failed",
            attempt_count=1,
            last_status_code=500,
            last_error="Server error",
            processed_timestamp=at(2),
        ),
        "c": make_log(
            e2,
            one,
            "retrying",
            attempt_count=1,
            last_status_code=503,
            processed_timestamp=at(11),
            next_attempt_at=at(12),
        ),
        "d": make_log(e2, two, "queued", next_attempt_at=at(10)),
        "e": make_log(e3, one, "sending", next_attempt_at=at(21)),
        # Its destination was deleted.
        "f": make_log(
            e3,
            None,
            "failed",
            last_error="Destination deleted.",
            processed_timestamp=at(21),
        ),
        "g": make_log(
            eo, other, "failed", attempt_count=1, last_status_code=500, processed_timestamp=at(6)
        ),
    }
    make_attempt(
        logs["a"],
        1,
        started_at=at(1),
        duration_ms=35,
        status_code=200,
        response_headers={"Content-Type": "text/plain"},
        response_body="ok",
    )
    make_attempt(
        logs["c"],
        1,
        started_at=at(11),
        duration_ms=80,
        status_code=503,
        response_body="busy",
        error_class="HTTPError",
        error_message="503 Service Unavailable",
    )
    return World(one, two, other, {"order-1": e1, "order-2": e2, "order-3": e3, "other": eo}, logs)

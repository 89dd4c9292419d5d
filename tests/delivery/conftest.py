"""Helpers of the delivery tests: destinations on the sink with a real signing secret, logs
ready to send, and a poster for incoming_data."""

import itertools
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from delivery import engine, transport
from delivery.models import DeliveryLog, Destination, Event, LogStatus
from identity.models import Account, User
from tests.conftest import Persona
from tests.sink import Sink

INCOMING = "/server/incoming_data/"
_seq = itertools.count(1)


def sink_destination(
    account: Account,
    sink: Sink,
    path: str = "/hook",
    *,
    http_method: str = "POST",
    headers: dict[str, str] | None = None,
    is_active: bool = True,
) -> Destination:
    """A destination pointing at `sink` + `path`, with a valid Standard Webhooks secret."""
    return Destination.objects.create(
        account=account,
        url=f"{sink.url}{path}",
        http_method=http_method,
        headers=headers or {},
        is_active=is_active,
        signing_secret=transport.new_signing_secret(),
    )


def start(destination: Destination) -> engine.LaneRun:
    """Take slot 0 (as lanes_to_start does) and run the destination's lane."""
    assert engine.take_slot(destination.pk, 0)
    return engine.lane_run(destination.pk)


def due_log(
    destination: Destination,
    payload: dict[str, Any] | None = None,
    *,
    status: str = LogStatus.QUEUED,
    next_attempt_at: datetime | None = None,
    **extra: object,
) -> DeliveryLog:
    """A new event of the destination's account and its log, due now unless told otherwise."""
    now = timezone.now()
    payload = {"n": next(_seq)} if payload is None else payload
    event = Event.objects.create(
        account_id=destination.account_id,
        event_id=f"evt-{next(_seq)}",
        payload=payload,
        size=len(str(payload)),
        received_at=now,
    )
    extra.setdefault("received_timestamp", now)
    return DeliveryLog.objects.create(
        event=event,
        destination=destination,
        account_id=destination.account_id,
        status=status,
        next_attempt_at=next_attempt_at or now,
        **extra,
    )


Poster = Callable[..., Any]


@pytest.fixture
def admin_user(admin: Persona) -> User:
    """The ADMIN of `account`, as the actor of service calls."""
    assert admin.user is not None
    return admin.user


@pytest.fixture
def post_incoming() -> Poster:
    """POST a raw body to incoming_data through the full Django stack."""
    client = Client()

    def post(
        body: str | bytes,
        *,
        token: str | None = None,
        event_id: str | None = None,
        content_type: str = "application/json",
        **headers: str,
    ) -> Any:
        if token is not None:
            headers["CL-X-TOKEN"] = token
        if event_id is not None:
            headers["CL-X-EVENT-ID"] = event_id
        # CONTENT_TYPE also in the environ: the test client leaves it out for an empty body.
        return client.post(
            INCOMING, body, content_type=content_type, headers=headers, CONTENT_TYPE=content_type
        )

    return post


def task_calls(enqueued: list[Any], name: str = "lane") -> list[tuple[Any, ...]]:
    """The arguments of each `name` task in `enqueued` (the fixture), in order."""
    return [task.args for task in enqueued if task.name == name]

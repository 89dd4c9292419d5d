"""Accepting an event, in two halves: the hot path of incoming_data, then the fan-out.

`event_ingest` stores the event alone (one statement on PostgreSQL), whatever the number of
destinations, and counts the account's active destinations for the answer; nothing is
enqueued here. On PostgreSQL with workers, the same statement NOTIFYs them (`wake_by_notify`,
delivery/wakes.py); otherwise the caller hands the result to `tasks.after_accept`, which wakes
the account (one cache round trip; one enqueue when no wake is pending). A worker runs `fan_out`:
one `queued` log per active destination for every pending event of the account, many events
per statement. The event row is the outbox of its fan-out (`fanned_out_at` null until its logs
exist): if the wake is lost, the sweeper finds the pending event."""

import json
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from delivery import selectors
from delivery.models import DeliveryLog, Destination, Event, LogStatus, new_webhook_id
from identity.models import Account
from project.db import prepared_cursor, retry_contended


@dataclass(frozen=True)
class IngestResult:
    event_id: str
    deliveries: int
    duplicate: bool
    account_id: uuid.UUID | None = None
    # The event waits for its fan-out (false for a duplicate, or with no active destination).
    pending: bool = False
    # Its commit notified the workers (`wake_by_notify`): nothing more wakes the account.
    notified: bool = False


class AccountGone(Exception):
    """The account of an event was deleted while the event was being stored."""


def event_ingest(
    *,
    account_id: uuid.UUID,
    event_id: str | None,
    payload: dict[str, Any],
    size: int,
    body: bytes | None = None,
) -> IngestResult:
    """Store an event, pending its fan-out, in one transaction; `deliveries` is the number of
    the account's active destinations in that transaction's snapshot (those the event goes to,
    unless one is added or removed before a worker fans it out, a few milliseconds later).

    `body` is the request body `payload` was parsed from: it is stored as received (as UTF-8
    text; a UTF-16/32 body is transcoded, a BOM dropped) and deliveries send exactly that.
    Without it, deliveries send `payload` re-serialised as compact JSON.

    A repeated `event_id` for the account creates nothing and returns the original's result
    with `duplicate=True` (also when a concurrent request wins the unique-constraint race).

    Raises AccountGone when the account was deleted meanwhile (nothing is stored), and
    Contended when the insert lost a deadlock twice."""
    text = _body_text(body)
    try:
        return retry_contended(
            lambda: _event_insert(
                account_id=account_id, event_id=event_id, payload=payload, size=size, body=text
            )
        )
    except IntegrityError:
        known = _known(account_id, event_id)
        if known is None:
            raise
        return known


def _known(account_id: uuid.UUID, event_id: str | None) -> IngestResult | None:
    """After an IntegrityError: the original event's result when `event_id` is a repeat;
    raises AccountGone when the account is gone; None when neither explains it."""
    original = (
        Event.objects.filter(account_id=account_id, event_id=event_id).first()
        if event_id is not None
        else None
    )
    if original is not None:
        deliveries = (
            original.logs.count()
            if original.fanned_out_at is not None
            else selectors.active_destinations(account_id).count()
        )
        return IngestResult(original.event_id, deliveries, duplicate=True)
    if not Account.objects.filter(pk=account_id).exists():
        raise AccountGone from None
    return None


def _body_text(body: bytes | None) -> str:
    """The JSON text of `body` as it will be sent (UTF-8 on the wire): the bytes received when
    they are UTF-8; "" (send the payload re-serialised) when there is none or it does not
    decode — json.loads is more lenient than a strict decode."""
    if not body:
        return ""
    try:
        return body.decode(json.detect_encoding(body))
    except UnicodeDecodeError:
        return ""


_EVENT = Event._meta.db_table
_LOG = DeliveryLog._meta.db_table
_DESTINATION = Destination._meta.db_table
# The count and the insert in one statement, so one round trip and no explicit transaction:
# an event with no active destination has nothing to fan out.
_INSERT = f"""
WITH d AS (SELECT count(*) AS n FROM {_DESTINATION} WHERE account_id = %(account)s AND is_active),
event AS (
    INSERT INTO {_EVENT} (account_id, event_id, payload, body, size, received_at, fanned_out_at)
    SELECT %(account)s, %(event_id)s, %(payload)s::jsonb, %(body)s, %(size)s, %(now)s,
        CASE WHEN d.n = 0 THEN %(now)s END
    FROM d
    RETURNING id
)
SELECT d.n, CASE WHEN %(notify)s AND d.n > 0 THEN pg_notify(%(channel)s, %(account)s::text) END
FROM d, event
"""  # noqa: S608 (table names are the models'; every value is a parameter)

# The channel of the wake notifications (`wake_by_notify`): the account id of an event pending
# its fan-out, delivered to every listening worker process when the event commits.
WAKE_CHANNEL = "datapusher_wake"


def wake_by_notify() -> bool:
    """Whether an accepted event wakes its account by NOTIFY on the event's own statement
    (PostgreSQL, DELIVERY_WAKE_NOTIFY on, and a queue consumed by workers: their listener,
    delivery/wakes.py, sets the wake flag) instead of a cache round trip after commit."""
    from huey.contrib.djhuey import HUEY

    return (
        connection.vendor == "postgresql" and settings.DELIVERY_WAKE_NOTIFY and not HUEY.immediate
    )


def _event_insert(
    *, account_id: uuid.UUID, event_id: str | None, payload: dict[str, Any], size: int, body: str
) -> IngestResult:
    now = timezone.now()
    event_id = event_id if event_id is not None else uuid.uuid4().hex
    if connection.vendor == "postgresql":
        # One statement is its own transaction; inside a caller's, a savepoint keeps a
        # duplicate's IntegrityError from aborting it. No health check (a round trip per
        # request): after a database restart, the first request of a server process on its
        # old connection answers 503 with Retry-After, as during the outage, and nothing is
        # written; the next one connects again.
        scope = transaction.atomic() if connection.in_atomic_block else nullcontext()
        notified = wake_by_notify()
        with scope, prepared_cursor(health_check=False) as cursor:
            cursor.execute(
                _INSERT,
                {
                    "account": account_id,
                    "event_id": event_id,
                    "payload": json.dumps(payload),
                    "body": body,
                    "size": size,
                    "now": now,
                    "notify": notified,
                    "channel": WAKE_CHANNEL,
                },
            )
            deliveries, _ = cursor.fetchone()
    else:
        notified = False
        with transaction.atomic():
            deliveries = selectors.active_destinations(account_id).count()
            Event.objects.create(
                account_id=account_id,
                event_id=event_id,
                payload=payload,
                body=body,
                size=size,
                received_at=now,
                fanned_out_at=None if deliveries else now,
            )
    return IngestResult(
        event_id,
        deliveries,
        duplicate=False,
        account_id=account_id,
        pending=bool(deliveries),
        notified=notified and bool(deliveries),
    )


@dataclass(frozen=True)
class FanOut:
    logs: list[DeliveryLog]  # the `queued` logs created, by event then destination
    more: bool  # the batch was full: more events may be pending


def fan_out(account_id: uuid.UUID, destinations: int) -> FanOut:
    """Create the `queued` logs of the account's pending events (the oldest first, as many as
    make about FAN_OUT_ROWS logs for `destinations` destinations), one per destination active
    now, and mark the events fanned out, in one transaction (one statement on PostgreSQL).
    A second fan-out of the same account waits for the first (row locks, not SKIP LOCKED), so
    logs are created in the events' order; each is due since its event was received, and a
    lane claims by due time: a destination's deliveries keep the events' order."""
    limit = max(1, FAN_OUT_ROWS // max(destinations, 1))
    now = timezone.now()
    if connection.vendor == "postgresql":
        with prepared_cursor() as cursor:
            cursor.execute(
                _FAN_OUT,
                {"account": account_id, "limit": limit, "now": now, "queued": LogStatus.QUEUED},
            )
            rows = cursor.fetchall()
        # The last row counts the events marked (some may have had no destination left).
        marked = next(row[1] for row in rows if row[0] is None)
        logs = [
            _queued(
                account_id, (event, name), destination, received, now, webhook_id=webhook, pk=pk
            )
            for pk, event, destination, webhook, received, name in rows
            if pk is not None
        ]
        return FanOut(logs, more=marked >= limit)
    with transaction.atomic():
        pending = list(
            Event.objects.filter(account_id=account_id, fanned_out_at=None)
            .order_by("id")
            .values_list("id", "event_id", "received_at")[:limit]
        )
        Event.objects.filter(pk__in=[pk for pk, _, _ in pending]).update(fanned_out_at=now)
        destination_ids = list(
            selectors.active_destinations(account_id).order_by("id").values_list("id", flat=True)
        )
        logs = DeliveryLog.objects.bulk_create(
            [
                _queued(
                    account_id,
                    (event, name),
                    destination,
                    received,
                    now,
                    webhook_id=new_webhook_id(),
                )
                for event, name, received in pending
                for destination in destination_ids
            ]
        )
    return FanOut(logs, more=len(pending) >= limit)


def _queued(
    account_id: uuid.UUID,
    event: tuple[int, str],
    destination_id: int,
    received: datetime,
    now: datetime,
    *,
    webhook_id: str,
    pk: int | None = None,
) -> DeliveryLog:
    """A `queued` log of a fanned-out event (its pk and CL-X-EVENT-ID: the log carries a
    partial Event, for the live message), due since the event was received."""
    event_pk, event_id = event
    log = DeliveryLog(
        pk=pk,
        event_id=event_pk,
        destination_id=destination_id,
        account_id=account_id,
        webhook_id=webhook_id,
        status=LogStatus.QUEUED,
        next_attempt_at=received,
        received_timestamp=received,
        updated_at=now,
    )
    log.event = Event(pk=event_pk, account_id=account_id, event_id=event_id, received_at=received)
    return log


# Logs one fan-out creates at most (fewer events per batch for an account with many
# destinations; at least one event).
FAN_OUT_ROWS = 1000
_FAN_OUT = f"""
WITH pending AS (
    SELECT id FROM {_EVENT} WHERE account_id = %(account)s AND fanned_out_at IS NULL
    ORDER BY id LIMIT %(limit)s FOR UPDATE
), marked AS (
    UPDATE {_EVENT} AS e SET fanned_out_at = %(now)s FROM pending WHERE e.id = pending.id
    RETURNING e.id, e.received_at, e.event_id
), created AS (
    INSERT INTO {_LOG} (event_id, destination_id, account_id, webhook_id, status,
        attempt_count, schedule_offset, next_attempt_at, received_timestamp, last_error,
        updated_at)
    SELECT marked.id, d.id, %(account)s, 'msg_' || replace(gen_random_uuid()::text, '-', ''),
        %(queued)s, 0, 0, marked.received_at, marked.received_at, '', %(now)s
    FROM marked CROSS JOIN (
        SELECT id FROM {_DESTINATION} WHERE account_id = %(account)s AND is_active
    ) AS d
    ORDER BY marked.id, d.id
    RETURNING id, event_id, destination_id, webhook_id, received_timestamp
)
SELECT created.*, marked.event_id FROM created JOIN marked ON marked.id = created.event_id
UNION ALL SELECT NULL, count(*), NULL, NULL, NULL, NULL FROM marked
"""  # noqa: S608 (table names are the models'; every value is a parameter)

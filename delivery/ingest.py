"""Accepting an event: the hot path of incoming_data.

One transaction stores the event and one `queued` log per active destination (one bulk
statement), whatever the number of destinations; nothing is enqueued here. The caller hands
the result to `tasks.after_accept`, which publishes the `queued` logs and wakes the account's
lanes (O(1) Redis round trips). If that is lost, the sweeper finds the logs overdue: the rows
are the outbox."""

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from delivery import selectors
from delivery.models import DeliveryLog, Event, LogStatus, new_webhook_id
from identity.models import Account
from project.db import retry_contended


@dataclass(frozen=True)
class IngestResult:
    event_id: str
    deliveries: int
    duplicate: bool
    account_id: uuid.UUID | None = None
    # The logs created (none for a duplicate), to publish and to wake their lanes for.
    logs: list[DeliveryLog] = field(default_factory=list)


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
    """Store an event and one `queued` log per active destination in one transaction.

    `body` is the request body `payload` was parsed from: it is stored as received (as UTF-8
    text; a UTF-16/32 body is transcoded, a BOM dropped) and deliveries send exactly that.
    Without it, deliveries send `payload` re-serialised as compact JSON.

    A repeated `event_id` for the account creates nothing and returns the original's result
    with `duplicate=True` (also when a concurrent request wins the unique-constraint race).

    Raises AccountGone when the account was deleted meanwhile (nothing is stored), and
    Contended when the insert lost a deadlock twice."""
    text = _body_text(body)

    def insert() -> IngestResult:
        return retry_contended(
            lambda: _event_insert(
                account_id=account_id, event_id=event_id, payload=payload, size=size, body=text
            )
        )

    for attempt in range(2):
        if attempt:
            # A destination deleted since its id was cached: forget the cache, try once more.
            cache.delete(selectors.destinations_cache_key(account_id))
        try:
            return insert()
        except IntegrityError:
            known = _known(account_id, event_id)
            if known is not None:
                return known
            if attempt:
                raise
    raise AssertionError("unreachable")


def _known(account_id: uuid.UUID, event_id: str | None) -> IngestResult | None:
    """After an IntegrityError: the original event's result when `event_id` is a repeat;
    raises AccountGone when the account is gone; None when neither explains it."""
    original = (
        Event.objects.filter(account_id=account_id, event_id=event_id).first()
        if event_id is not None
        else None
    )
    if original is not None:
        return IngestResult(original.event_id, original.logs.count(), duplicate=True)
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


@transaction.atomic
def _event_insert(
    *, account_id: uuid.UUID, event_id: str | None, payload: dict[str, Any], size: int, body: str
) -> IngestResult:
    now = timezone.now()
    event_id = event_id if event_id is not None else uuid.uuid4().hex
    destination_ids = selectors.active_destination_ids(account_id)
    if connection.vendor == "postgresql":
        logs = _insert_postgresql(account_id, event_id, payload, size, body, now, destination_ids)
    else:
        event = Event.objects.create(
            account_id=account_id,
            event_id=event_id,
            payload=payload,
            body=body,
            size=size,
            received_at=now,
        )
        logs = DeliveryLog.objects.bulk_create(
            [
                DeliveryLog(
                    event=event,
                    destination_id=destination_id,
                    account_id=account_id,
                    status=LogStatus.QUEUED,
                    next_attempt_at=now,
                    received_timestamp=now,
                    updated_at=now,
                )
                for destination_id in destination_ids
            ]
        )
    return IngestResult(event_id, len(logs), duplicate=False, account_id=account_id, logs=logs)


_EVENT = Event._meta.db_table
_LOG = DeliveryLog._meta.db_table
# The event and its logs in one statement: the ORM's two inserts cost more CPU in Django than
# in PostgreSQL.
_INSERT = f"""
WITH event AS (
    INSERT INTO {_EVENT} (account_id, event_id, payload, body, size, received_at)
    VALUES (%(account)s, %(event_id)s, %(payload)s::jsonb, %(body)s, %(size)s, %(now)s)
    RETURNING id
)
INSERT INTO {_LOG} (event_id, destination_id, account_id, webhook_id, status, attempt_count,
    schedule_offset, next_attempt_at, received_timestamp, last_error, updated_at)
SELECT event.id, d.id, %(account)s, d.webhook_id, %(queued)s, 0, 0, %(now)s, %(now)s, '', %(now)s
FROM event, unnest(%(destinations)s::bigint[], %(webhook_ids)s::text[]) AS d(id, webhook_id)
RETURNING id, event_id, destination_id, webhook_id
"""  # noqa: S608 (table names are the models'; every value is a parameter)


def _insert_postgresql(
    account_id: uuid.UUID,
    event_id: str,
    payload: dict[str, Any],
    size: int,
    body: str,
    now: datetime,
    destination_ids: list[int],
) -> list[DeliveryLog]:
    webhook_ids = [new_webhook_id() for _ in destination_ids]
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT,
            {
                "account": account_id,
                "event_id": event_id,
                "payload": json.dumps(payload),
                "body": body,
                "size": size,
                "now": now,
                "queued": LogStatus.QUEUED.value,
                "destinations": destination_ids,
                "webhook_ids": webhook_ids,
            },
        )
        rows = cursor.fetchall()
    by_destination = {row[2]: row for row in rows}
    return [
        DeliveryLog(
            pk=by_destination[d][0],
            event_id=by_destination[d][1],
            destination_id=d,
            account_id=account_id,
            webhook_id=by_destination[d][3],
            status=LogStatus.QUEUED,
            next_attempt_at=now,
            received_timestamp=now,
            updated_at=now,
        )
        for d in destination_ids
    ]

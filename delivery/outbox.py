"""The delivery log's state machine: every status change of a `DeliveryLog` is one of these
functions, and each works on a batch of logs with a constant number of statements.

    queued/retrying --claim--> sending --record--> success | retrying | failed
    sending --give_back--> queued/retrying (unsent rest of a batch, as it was)
    queued/retrying --defer--> queued/retrying, due at the breaker's probe time
    queued/retrying --resume--> queued/retrying, due now (breaker closed, destination enabled)
    sending (lease ended) --take_back--> retrying | failed (the lost try recorded)
    failed/success/retrying/queued --requeue--> queued (manual retry; schedule restarts)

A claim holds a lease (`next_attempt_at` of a `sending` log is its end); every later write of
the claimed logs is conditional on that lease, so a claim the sweeper took back is never
overwritten. Changes are published to live subscribers after commit. Nothing here enqueues:
callers get back what changed and the task layer schedules what follows."""

import contextlib
import json
import logging
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, cast

from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Min, QuerySet
from django.utils import timezone

from delivery import live, policy, selectors, transport
from delivery.errors import DeliveryErrorCode
from delivery.models import (
    UNSTORABLE_TEXT,
    DeliveryAttempt,
    DeliveryLog,
    Destination,
    Event,
    LogStatus,
)
from identity.errors import NotFound, invalid
from identity.permissions import Action, Actor, account_ids, check, require_user

logger = logging.getLogger(__name__)

DUE = (LogStatus.QUEUED, LogStatus.RETRYING)
# Why a log failed without a request.
DELETED = "Destination deleted."
INACTIVE = "Destination is inactive."
LOST_TRY_CLASS = "OutcomeUnknown"
LOST_TRY_MESSAGE = (
    "The worker stopped before recording this try's outcome "
    "(the request may have reached the destination)."
)
_RESULT_FIELDS = [
    "status",
    "attempt_count",
    "last_status_code",
    "last_error",
    "processed_timestamp",
    "next_attempt_at",
    "updated_at",
]


@dataclass
class Claim:
    """Logs marked `sending` under one lease, in the order they are to be sent, each with its
    event loaded. `before` keeps each log's status and due time before the claim."""

    lease: datetime
    logs: list[DeliveryLog]
    before: dict[int, tuple[str, datetime | None]]
    # The `sending` changes not published yet (claim(publish=False)): the claim's next write
    # publishes them, first, in its own message.
    unpublished: list[dict[str, Any]] = field(default_factory=list)
    # The destination's updated_at when the logs were claimed (PostgreSQL's one-statement
    # claim of a destination's logs): a lane's copy of the destination older than this is
    # stale. None: not known.
    destination_version: datetime | None = None

    def take_unpublished(self) -> list[dict[str, Any]]:
        taken, self.unpublished = self.unpublished, []
        return taken


def claim(
    *,
    destination_id: int | None = None,
    log_id: int | None = None,
    limit: int = 1,
    publish: bool = True,
) -> Claim | None:
    """Claim up to `limit` due logs of a destination (oldest due first), or the one log
    `log_id` if it is due (within a second: the sweeper's clock may run ahead). The due rows
    are locked (`SKIP LOCKED` on PostgreSQL: concurrent lanes take different rows; SQLite's
    IMMEDIATE transactions serialise claims) and marked `sending`: one statement for a
    destination on PostgreSQL, two otherwise. Publishes `sending`; with `publish=False`, the
    claim's first write (record_claimed, give_back) does, in one message with its own changes
    (a lane of a destination that answers quickly: one message less per batch). None when
    nothing was due."""
    now = timezone.now()
    lease = now + policy.lease()
    one_statement = destination_id is not None and connection.vendor == "postgresql"
    with _atomic(one_statement=one_statement):
        if one_statement:
            assert destination_id is not None
            logs, before, version = _claim_postgresql(
                destination_id, limit=limit, now=now, lease=lease
            )
        else:
            version = None
            rows = DeliveryLog.objects.select_for_update(
                skip_locked=True, of=("self",)
            ).select_related("event")
            if log_id is not None:
                rows = rows.filter(pk=log_id, next_attempt_at__lte=now + timedelta(seconds=1))
            else:
                assert destination_id is not None
                rows = rows.filter(destination_id=destination_id, next_attempt_at__lte=now)
            logs = list(rows.filter(status__in=DUE).order_by("next_attempt_at", "id")[:limit])
            before = {log.pk: (log.status, log.next_attempt_at) for log in logs}
            if logs:
                DeliveryLog.objects.filter(pk__in=list(before)).update(
                    status=LogStatus.SENDING, next_attempt_at=lease, updated_at=now
                )
        if not logs:
            return None
        for log in logs:
            log.status, log.next_attempt_at, log.updated_at = LogStatus.SENDING, lease, now
        if publish:
            transaction.on_commit(lambda: live.publish(logs))
            return Claim(lease, logs, before, destination_version=version)
    unpublished = [live.log_message(log) for log in logs]
    return Claim(lease, logs, before, unpublished=unpublished, destination_version=version)


_LOG = DeliveryLog._meta.db_table
_EVENT = Event._meta.db_table
_DESTINATION = Destination._meta.db_table
# Lock, mark and load in one statement (the ORM's two cost more CPU than PostgreSQL does).
_CLAIM = f"""
WITH due AS (
    SELECT id, status, next_attempt_at FROM {_LOG}
    WHERE destination_id = %(destination)s AND status = ANY(%(due)s) AND next_attempt_at <= %(now)s
    ORDER BY next_attempt_at, id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {_LOG} AS log
SET status = %(sending)s, next_attempt_at = %(lease)s, updated_at = %(now)s
FROM due, {_EVENT} AS event, {_DESTINATION} AS destination
WHERE log.id = due.id AND event.id = log.event_id AND destination.id = log.destination_id
RETURNING log.id, log.event_id, log.account_id, log.webhook_id, log.attempt_count,
    log.schedule_offset, log.received_timestamp, log.last_status_code, log.processed_timestamp,
    log.last_error, due.status, due.next_attempt_at, event.payload, event.body, event.account_id,
    event.event_id, event.size, event.received_at, destination.updated_at
"""  # noqa: S608 (table names are the models'; every value is a parameter)


def _claim_postgresql(
    destination_id: int, *, limit: int, now: datetime, lease: datetime
) -> tuple[list[DeliveryLog], dict[int, tuple[str, datetime | None]], datetime | None]:
    # Not prepared (project.db.prepared_cursor): a generic plan cannot tell the partial index
    # of due logs applies, nor how selective the destination is, and scans by due time across
    # all destinations; each claim is planned with its values.
    with connection.cursor() as cursor:
        cursor.execute(
            _CLAIM,
            {
                "destination": destination_id,
                "due": [str(status) for status in DUE],
                "now": now,
                "limit": limit,
                "sending": str(LogStatus.SENDING),
                "lease": lease,
            },
        )
        rows = cursor.fetchall()
    logs, before = [], {}
    for row in sorted(rows, key=lambda row: (row[11], row[0])):  # due time, id: send order
        (pk, event_pk, account, webhook_id, attempts, offset, received, code, processed) = row[:9]
        error, status, due, payload, body, event_account, event_id, size, received_at = row[9:18]
        log = DeliveryLog(
            pk=pk,
            event_id=event_pk,
            destination_id=destination_id,
            account_id=account,
            webhook_id=webhook_id,
            attempt_count=attempts,
            schedule_offset=offset,
            received_timestamp=received,
            processed_timestamp=processed,
            last_status_code=code,
            last_error=error,
        )
        log.event = Event(
            pk=event_pk,
            account_id=event_account,
            event_id=event_id,
            payload=json.loads(payload) if isinstance(payload, str) else payload,
            body=body,
            size=size,
            received_at=received_at,
        )
        logs.append(log)
        before[pk] = (status, due)
    return logs, before, rows[0][18] if rows else None


def give_back(held: Claim, logs: Sequence[DeliveryLog]) -> None:
    """Return claimed logs that were not sent to the status and due time they had: the lane
    stops early (a slow destination), they keep their place and their retry budget."""
    if not logs:
        return
    now = timezone.now()
    with transaction.atomic():
        mine = set(
            DeliveryLog.objects.select_for_update()
            .filter(
                pk__in=[log.pk for log in logs],
                status=LogStatus.SENDING,
                next_attempt_at=held.lease,
            )
            .values_list("pk", flat=True)
        )
        back = [log for log in logs if log.pk in mine]
        for log in back:
            log.status, log.next_attempt_at = held.before[log.pk]
            log.updated_at = now
        DeliveryLog.objects.bulk_update(back, ["status", "next_attempt_at", "updated_at"])
        earlier = held.take_unpublished()
        if back or earlier:
            transaction.on_commit(lambda: live.publish(back, earlier=earlier))


def defer(destination_id: int, until: datetime) -> int:
    """Move the destination's due logs to `until` (its breaker's probe time), keeping their
    status, their retry budget and their order (claims take the oldest first among equal due
    times); one statement. Not published: the logs' status does not change. Returns how many
    moved."""
    return DeliveryLog.objects.filter(
        destination_id=destination_id, status__in=DUE, next_attempt_at__lt=until
    ).update(next_attempt_at=until)


def resume(destination_id: int) -> int:
    """Make every waiting log of the destination due now, at one time (its breaker closed,
    or it was enabled again): the retries the outage pushed back go out with the rest, in
    the order the logs were created, without spending a try. One statement, not published
    (statuses do not change). Returns how many moved."""
    return DeliveryLog.objects.filter(destination_id=destination_id, status__in=DUE).update(
        next_attempt_at=timezone.now()
    )


@dataclass
class Result:
    """The end of one claimed log's try: its next status and, for `retrying`, the delay; the
    outcome of the request (None when no request was made, `error` then says why)."""

    log: DeliveryLog
    status: LogStatus
    outcome: transport.Outcome | None
    delay: float | None = None
    error: str = ""


def result_of(log: DeliveryLog, outcome: transport.Outcome) -> Result:
    """What a try's outcome means for its log: success; a transient failure retries while the
    schedule (restarted by a manual retry) allows; anything else fails."""
    if outcome.kind is transport.Kind.SUCCESS:
        return Result(log, LogStatus.SUCCESS, outcome)
    delay = None
    if outcome.kind is transport.Kind.TRANSIENT:
        delay = policy.retry_delay(log.attempt_count + 1 - log.schedule_offset, outcome.retry_after)
    if delay is None:
        return Result(log, LogStatus.FAILED, outcome)
    return Result(log, LogStatus.RETRYING, outcome, delay=delay)


def record_claimed(held: Claim, results: Sequence[Result]) -> list[DeliveryLog]:
    """`record` of tries of the logs of `held`, publishing its unpublished `sending` changes
    first."""
    return record(results, lease=held.lease, earlier=held.take_unpublished())


def record(
    results: Sequence[Result], *, lease: datetime, earlier: Sequence[dict[str, Any]] = ()
) -> list[DeliveryLog]:
    """Write the end of claimed tries: new statuses and due times (one bulk statement) and an
    attempt per request made (one bulk insert), in one transaction; publish after commit.
    Returns the logs written: a log whose claim was taken back meanwhile (its lease ran out,
    the sweeper recorded the try as lost) is left as the sweeper wrote it.

    What receivers sent is stored with NUL and unpaired surrogates replaced by U+FFFD. Should
    a write fail even so, each try is written on its own, and one that still fails is written
    without the answer's headers and body, its error saying why: no try leaves its log
    `sending`. A database that cannot be reached raises: leases and the sweeper take over.

    `earlier`: changes not published yet (live.log_message), published first, in the same
    message."""
    if not results:
        if earlier:
            live.publish([], earlier=earlier)
        return []
    try:
        return _record(results, lease=lease, earlier=earlier)
    except (OperationalError, InterfaceError):
        raise
    except Exception as failure:
        if len(results) > 1:
            written = record(results[:1], lease=lease, earlier=earlier)
            return written + [
                log for result in results[1:] for log in record([result], lease=lease)
            ]
        (result,) = results
        logger.exception(
            "Log %s: its %s try could not be stored as it is", result.log.pk, result.status
        )
        note = f"the answer could not be stored: {type(failure).__name__}"
        outcome = result.outcome
        if outcome is not None:
            message = f"{outcome.error_message} ({note})" if outcome.error_message else note
            outcome = replace(outcome, headers={}, body="", error_message=message)
        error = f"{result.error} ({note})" if result.error else note
        return _record(
            [replace(result, outcome=outcome, error=error)], lease=lease, earlier=earlier
        )


def _storable(text: str, limit: int | None = None) -> str:
    """`text` without what PostgreSQL text/jsonb and UTF-8 cannot hold (NUL, unpaired
    surrogates: each becomes U+FFFD), cut to `limit` characters."""
    text = text[:limit]
    return UNSTORABLE_TEXT.sub("\ufffd", text) if UNSTORABLE_TEXT.search(text) else text


def _record(
    results: Sequence[Result], *, lease: datetime, earlier: Sequence[dict[str, Any]]
) -> list[DeliveryLog]:
    # The logs as claimed, to restore should the write fail (record then tries again).
    claimed = [{name: getattr(r.log, name) for name in _RESULT_FIELDS} for r in results]
    try:
        return _write_results(results, lease=lease, earlier=earlier)
    except Exception:
        for result, fields in zip(results, claimed, strict=True):
            for name, value in fields.items():
                setattr(result.log, name, value)
        raise


def _write_results(
    results: Sequence[Result], *, lease: datetime, earlier: Sequence[dict[str, Any]]
) -> list[DeliveryLog]:
    now = timezone.now()
    for result in results:
        log, outcome = result.log, result.outcome
        log.status = result.status
        if outcome is not None:
            log.attempt_count += 1
            log.last_status_code = outcome.status_code
        log.last_error = _storable(result.error if outcome is None else outcome.error_message)
        log.processed_timestamp = log.updated_at = now
        log.next_attempt_at = (
            None if result.delay is None else now + timedelta(seconds=result.delay)
        )
    attempts = [
        (
            result.log.pk,
            result.log.attempt_count,
            now - timedelta(milliseconds=outcome.duration_ms),
            outcome.duration_ms,
            outcome.status_code,
            {_storable(name): _storable(value) for name, value in outcome.headers.items()},
            _storable(outcome.body),
            _storable(outcome.error_class, 100),
            _storable(outcome.error_message),
        )
        for result in results
        if (outcome := result.outcome) is not None
    ]
    with _atomic(one_statement=connection.vendor == "postgresql"):
        held = _store([result.log for result in results], attempts, lease=lease)
        written = [result.log for result in results if result.log.pk in held]
        for result in results:
            if result.log.pk not in held:
                logger.warning(
                    "Log %s outlived its lease; its %s try stays recorded as lost",
                    result.log.pk,
                    result.status,
                )
        if written or earlier:
            transaction.on_commit(lambda: live.publish(written, earlier=earlier))
    return written


def _atomic(*, one_statement: bool) -> AbstractContextManager[object]:
    """A transaction around a write of several statements. A write of one statement (a claim
    or a record on PostgreSQL) is atomic on its own and gets none: BEGIN and COMMIT were two
    of a record's four round trips. Inside a transaction it gets a savepoint all the same, so
    that a failed statement leaves the outer transaction usable (record then tries again)."""
    if one_statement and not connection.in_atomic_block:
        return contextlib.nullcontext()
    return transaction.atomic()


# Column casts of the VALUES lists below (PostgreSQL types a parameter from its value, and a
# column of NULLs as text); SQLite takes the values as they are.
_CASTS = {
    "id": "bigint",
    "status": "varchar",
    "attempt_count": "integer",
    "last_status_code": "smallint",
    "last_error": "text",
    "processed_timestamp": "timestamp with time zone",
    "next_attempt_at": "timestamp with time zone",
    "updated_at": "timestamp with time zone",
}
_ATTEMPT_COLUMNS = [
    "log_id",
    "number",
    "started_at",
    "duration_ms",
    "status_code",
    "response_headers",
    "response_body",
    "error_class",
    "error_message",
]


def _store(
    logs: Sequence[DeliveryLog], attempts: Sequence[tuple[Any, ...]], *, lease: datetime
) -> set[int]:
    """Write the result fields of claimed logs, only where the claim still holds, and insert
    the attempts (values in _ATTEMPT_COLUMNS order) of those logs. Returns the ids written.
    On PostgreSQL ONE statement (a data-modifying WITH); elsewhere two. Django's bulk_update
    builds a CASE per field and row, and bulk_create model instances: both cost more CPU than
    the sends."""
    update, params = _update_claimed(logs, lease=lease)
    attempt_table = DeliveryAttempt._meta.db_table
    columns = ", ".join(_ATTEMPT_COLUMNS)
    if connection.vendor == "postgresql":
        sql = f"WITH updated AS ({update})"
        if attempts:
            values, attempt_params = _attempt_values(attempts)
            # Identifiers are the models'; every value is a parameter.
            sql += (
                f", inserted AS (INSERT INTO {attempt_table} ({columns}) "  # noqa: S608
                f"SELECT * FROM ({values}) AS a ({columns}) "
                "WHERE a.log_id IN (SELECT id FROM updated))"
            )
            params += attempt_params
        with connection.cursor() as cursor:
            cursor.execute(f"{sql} SELECT id FROM updated", params)  # noqa: S608
            return {row[0] for row in cursor.fetchall()}
    with connection.cursor() as cursor:
        cursor.execute(update, params)
        held = {row[0] for row in cursor.fetchall()}
        if mine := [row for row in attempts if row[0] in held]:
            values, attempt_params = _attempt_values(mine)
            cursor.execute(f"INSERT INTO {attempt_table} ({columns}) {values}", attempt_params)
    return held


def _update_claimed(logs: Sequence[DeliveryLog], *, lease: datetime) -> tuple[str, list[Any]]:
    """UPDATE ... FROM VALUES ... RETURNING id of the result fields of claimed logs, where
    the claim still holds."""
    ops = connection.ops
    postgres = connection.vendor == "postgresql"
    columns = list(_CASTS)
    placeholder = (
        "(" + ", ".join(f"CAST(%s AS {_CASTS[c]})" if postgres else "%s" for c in columns) + ")"
    )
    params: list[Any] = []
    for log in logs:
        params += [
            log.pk,
            log.status,
            log.attempt_count,
            log.last_status_code,
            log.last_error,
            ops.adapt_datetimefield_value(log.processed_timestamp),
            ops.adapt_datetimefield_value(log.next_attempt_at),
            ops.adapt_datetimefield_value(log.updated_at),
        ]
    table = DeliveryLog._meta.db_table
    assignments = ", ".join(f"{c} = v.column{i + 1}" for i, c in enumerate(columns) if c != "id")
    # Identifiers are the model's; every value is a parameter.
    sql = (
        f"UPDATE {table} SET {assignments} "  # noqa: S608
        f"FROM (VALUES {', '.join([placeholder] * len(logs))}) AS v "
        f"WHERE {table}.id = v.column1 AND {table}.status = %s AND {table}.next_attempt_at = %s "
        f"RETURNING {table}.id"
    )
    params += [LogStatus.SENDING, ops.adapt_datetimefield_value(lease)]
    return sql, params


def _attempt_values(rows: Sequence[tuple[Any, ...]]) -> tuple[str, list[Any]]:
    """VALUES ... of attempts (in _ATTEMPT_COLUMNS order), and its parameters."""
    ops = connection.ops
    postgres = connection.vendor == "postgresql"
    types = ["bigint", "integer", "timestamp with time zone", "integer", "smallint", "jsonb"]
    placeholder = (
        "(" + ", ".join(f"CAST(%s AS {t})" if postgres else "%s" for t in types) + ", %s, %s, %s)"
    )
    params: list[Any] = []
    for log_id, number, started, duration, code, headers, body, error_class, message in rows:
        params += [
            log_id,
            number,
            ops.adapt_datetimefield_value(started),
            duration,
            code,
            json.dumps(headers),
            body,
            error_class,
            message,
        ]
    return f"VALUES {', '.join([placeholder] * len(rows))}", params


# The first entry of the destination's in the partial index of waiting logs
# (log_destination_due), however long its backlog.
_NEXT_DUE = f"""
SELECT next_attempt_at FROM {_LOG}
WHERE destination_id = %s AND status IN ({", ".join(f"'{status}'" for status in DUE)})
    AND next_attempt_at IS NOT NULL
ORDER BY next_attempt_at LIMIT 1
"""  # noqa: S608 (the table is the model's, the statuses are the enum's)


def next_due(destination_id: int) -> datetime | None:
    """When the destination's earliest waiting (`queued`/`retrying`) log falls due. On
    PostgreSQL one raw statement (the ORM's aggregate cost 5x its CPU)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_NEXT_DUE, [destination_id])
            row = cursor.fetchone()
            return None if row is None else cast(datetime, row[0])
    due: datetime | None = DeliveryLog.objects.filter(
        destination_id=destination_id, status__in=DUE
    ).aggregate(due=Min("next_attempt_at"))["due"]
    return due


def take_back(*, now: datetime, limit: int) -> list[DeliveryLog]:
    """Record the lost try of every `sending` log whose lease ended by `now` (at most `limit`)
    and move it to `retrying` due at once, or `failed` when the schedule is used up, in one
    transaction. Locked rows are skipped (another sweeper holds them); a worker that records
    its outcome first wins, and the try is then not recorded twice.

    A lease that ran out is a try whose outcome nobody knows (the request may have reached the
    destination): it counts against the retry schedule like a transient failure, so a log
    whose sends kill the worker cannot loop forever."""
    with transaction.atomic():
        logs = list(
            DeliveryLog.objects.select_for_update(skip_locked=True)
            .filter(status=LogStatus.SENDING, next_attempt_at__lte=now)
            .order_by("next_attempt_at")[:limit]
        )
        written = timezone.now()
        attempts = []
        for log in logs:
            lease_end = log.next_attempt_at
            claimed_at = log.updated_at  # set by the claim; nothing else writes a `sending` log
            assert lease_end is not None
            number = log.attempt_count + 1
            exhausted = policy.retry_delay(number - log.schedule_offset) is None
            attempts.append(
                DeliveryAttempt(
                    log=log,
                    number=number,
                    started_at=claimed_at,
                    duration_ms=max(0, int((lease_end - claimed_at).total_seconds() * 1000)),
                    status_code=None,
                    error_class=LOST_TRY_CLASS,
                    error_message=LOST_TRY_MESSAGE,
                )
            )
            log.status = LogStatus.FAILED if exhausted else LogStatus.RETRYING
            log.attempt_count = number
            log.last_status_code = None
            log.last_error = LOST_TRY_MESSAGE
            log.processed_timestamp = log.updated_at = written
            # Due at once — also when `now` is ahead of the clock, so that a lane claims it.
            log.next_attempt_at = None if exhausted else min(now, written)
            logger.warning("Log %s: its lease ran out; try %d recorded as lost", log.pk, number)
        DeliveryLog.objects.bulk_update(logs, _RESULT_FIELDS)
        DeliveryAttempt.objects.bulk_create(attempts)
        if logs:
            transaction.on_commit(lambda: live.publish(logs))
    return logs


def fail_waiting(logs: QuerySet[DeliveryLog], reason: str) -> list[DeliveryLog]:
    """Fail the waiting (`queued`/`retrying`) logs among `logs` at once, without a request,
    `reason` as their error; publish after commit. Returns them."""
    now = timezone.now()
    failed = list(logs.select_for_update().filter(status__in=DUE))
    for log in failed:
        log.status, log.last_error, log.next_attempt_at = LogStatus.FAILED, reason, None
        log.processed_timestamp = log.updated_at = now
    DeliveryLog.objects.bulk_update(
        failed,
        ["status", "last_error", "next_attempt_at", "processed_timestamp", "updated_at"],
        batch_size=500,
    )
    if failed:
        transaction.on_commit(lambda: live.publish(failed))
    return failed


def requeue(
    ids: Iterable[int], *, statuses: Iterable[str], now: datetime | None = None
) -> list[DeliveryLog]:
    """Move the logs that still have one of `statuses` to `queued`, due now; the retry
    schedule starts over. Returns them (their lanes are to be woken)."""
    now = now or timezone.now()
    with transaction.atomic():
        logs = list(
            DeliveryLog.objects.select_for_update().filter(pk__in=list(ids), status__in=statuses)
        )
        for log in logs:
            log.status = LogStatus.QUEUED
            log.next_attempt_at = now
            log.schedule_offset = log.attempt_count
            log.updated_at = now
        DeliveryLog.objects.bulk_update(
            logs, ["status", "next_attempt_at", "schedule_offset", "updated_at"]
        )
        if logs:
            transaction.on_commit(lambda: live.publish(logs))
    return logs


def log_retry(*, actor: Actor, log_id: str | int) -> DeliveryLog:
    """Deliver a log again now (ADMIN), whatever its outcome so far; the retry schedule starts
    over. A log being sent right now raises `not_retryable`. The caller wakes its lane."""
    require_user(actor)
    log = selectors.log_get(actor=actor, log_id=log_id)
    if log is None:
        raise NotFound("Log")
    check(actor, Action.LOG_RETRY, log.account_id)
    requeued = requeue([log.pk], statuses=[s for s in LogStatus if s != LogStatus.SENDING])
    if not requeued:
        raise invalid(DeliveryErrorCode.NOT_RETRYABLE, "The log is being sent right now.")
    requeued[0].refresh_from_db()
    return requeued[0]


def logs_retry_failed(
    *, actor: Actor, filters: selectors.LogFilters | None = None
) -> list[DeliveryLog]:
    """Requeue every `failed` log matching `filters` in accounts where the actor is ADMIN, in
    batches of 1,000. Returns the logs requeued (the caller wakes their lanes)."""
    require_user(actor)
    f = replace(filters or selectors.LogFilters(), statuses=[LogStatus.FAILED])
    logs = selectors.apply_log_filters(
        DeliveryLog.objects.filter(account_id__in=account_ids(actor, Action.LOG_RETRY)), f
    )
    ids = list(logs.values_list("pk", flat=True))
    requeued: list[DeliveryLog] = []
    for start in range(0, len(ids), 1000):
        requeued += requeue(ids[start : start + 1000], statuses=[LogStatus.FAILED])
    return requeued

"""Huey tasks, and the only place that enqueues: thin transports that take ids and call the
engine, the outbox or maintenance, then schedule what those say must follow.

Huey has no acknowledgement: a task popped by a worker that dies is gone. The database rows
are the outbox, and `sweep` (every minute, and once when a worker starts) wakes the lanes of
whatever the queue lost. Maintenance has a higher priority than lane work, so a worker takes
it first whatever the queue holds (the queue storage must support priorities: Huey's SqliteHuey
and PriorityRedisHuey do; plain RedisHuey refuses them)."""

import logging
import threading
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from huey import crontab
from huey.contrib.djhuey import HUEY, db_periodic_task, db_task

from delivery import engine, ingest, live, maintenance, selectors, wakes
from delivery.ingest import IngestResult
from delivery.models import DeliveryLog
from identity.auth import tokens_purge

logger = logging.getLogger(__name__)

# Maintenance is taken from the queue before any lane (Huey's SQLite and priority-Redis
# storages dequeue by priority, then in order): recovery never waits behind a backlog.
MAINTENANCE_PRIORITY = 100
# A lane of a slow destination that finds no slow-lane room in its worker tries again after.
DEFER_SECONDS = 1.0
# Fan-out batches (ingest.FAN_OUT_ROWS logs each) one wake of an account runs before it lets
# the queue's other work go first.
FAN_OUT_BATCHES = 5


def event_accept(
    *,
    account_id: uuid.UUID,
    event_id: str | None,
    payload: dict[str, Any],
    size: int,
    body: bytes | None = None,
) -> IngestResult:
    """ingest.event_ingest, then `after_accept`: what incoming_data runs."""
    result = ingest.event_ingest(
        account_id=account_id, event_id=event_id, payload=payload, size=size, body=body
    )
    after_accept(result)
    return result


def after_accept(result: IngestResult) -> None:
    """After an event's commit: wake the account (one cache round trip; one enqueue when no
    wake is pending), whose worker fans the event out. Never raises: the event is committed,
    and the sweeper finds it pending if this is lost."""
    if result.pending and not result.notified:
        wake_accounts([str(result.account_id)])


def wake_accounts(account_ids: Iterable[str]) -> None:
    """Enqueue a wake of each account that has none pending (its wake flag). Never raises:
    the sweeper finds the pending events if this is lost."""
    for account_id in account_ids:
        try:
            if engine.wake_flag(account_id):
                wake_account(account_id)
        except Exception:
            logger.exception("Could not wake account %s; the sweeper will", account_id)


def wake_destinations(destination_ids: Iterable[int | None], *, run_one_here: bool = False) -> None:
    """Run a lane for each destination that has none running (e.g. after a manual retry);
    with `run_one_here`, the first of them in this task instead of a task of its own (one
    queue hop less before its first send)."""
    try:
        starting = engine.lanes_to_start(d for d in destination_ids if d is not None)
    except Exception:
        logger.exception("Could not wake lanes; the sweeper will")
        return
    here = starting.pop(0) if run_one_here and starting else None
    for destination_id in starting:
        try:
            lane(destination_id, 0)
        except Exception:
            logger.exception("Could not start the lane of destination %s", destination_id)
    if here is not None:
        _lane(here, 0)


@db_task()
def wake_account(account_id: str) -> None:
    """Fan out the account's pending events (their `queued` logs, published in one message
    per batch), then run a lane for each active destination that has none running (the first
    one here). After FAN_OUT_BATCHES full batches it wakes the account again at the back of
    the queue."""
    engine.clear_wake_flag(account_id)
    account = uuid.UUID(account_id)
    destination_ids = selectors.active_destination_ids(account)
    for _ in range(FAN_OUT_BATCHES):
        batch = ingest.fan_out(account, len(destination_ids))
        if batch.logs:
            live.publish(batch.logs)
        if not batch.more:
            break
    else:
        if engine.wake_flag(account_id):
            wake_account(account_id)
    wake_destinations(destination_ids, run_one_here=True)


@db_task()
def wake_destination(destination_id: int) -> None:
    """Scheduled for when a destination's next retry falls due."""
    wake_destinations([destination_id])


@db_task()
def lane(destination_id: int, slot: int = 0) -> None:
    """Deliver a destination's due logs for one time slice, then schedule what follows."""
    _lane(destination_id, slot)


def _lane(destination_id: int, slot: int) -> None:
    """engine.lane_run, then schedule what follows: the lane again, more lanes, or a wake at
    the next retry's due time."""
    run = engine.lane_run(destination_id, slot)
    for extra in run.spawn:
        lane(destination_id, extra)
    if run.again:
        lane(destination_id, slot)
    elif run.deferred:
        lane.schedule((destination_id, slot), delay=DEFER_SECONDS)
    elif run.wake_at is not None and engine.wake_later(destination_id, run.wake_at):
        wake_destination.schedule((destination_id,), eta=run.wake_at)


@db_task()
def deliver(log_id: int) -> None:
    """Deliver log `log_id` (tasks queued before lanes existed): wakes its destination's lane."""
    destination_id = (
        DeliveryLog.objects.filter(pk=log_id).values_list("destination_id", flat=True).first()
    )
    wake_destinations([destination_id])


def sweep_now(*, now: datetime | None = None, limit: int = 1000) -> int:
    """maintenance.logs_sweep, then wake the lanes and accounts it names. Returns how many
    deliveries it resumes."""
    swept = maintenance.logs_sweep(now=now, limit=limit)
    wake_destinations(swept.destination_ids)
    for account_id in swept.account_ids:
        wake_account(account_id)
    return swept.count


@db_periodic_task(crontab(minute="*"), priority=MAINTENANCE_PRIORITY)
def sweep() -> None:
    """Resume overdue and abandoned deliveries, and fan out events whose wake was lost."""
    sweep_now()


@db_periodic_task(crontab(minute="17", hour="3"), priority=MAINTENANCE_PRIORITY)
def purge() -> None:
    """Delete logs, attempts and orphan events past DELIVERY_LOG_RETENTION_DAYS, and expired
    user tokens."""
    counts = maintenance.logs_purge()
    counts["tokens"] = tokens_purge()
    logger.info("Retention purge: %s", counts)


_startup_sweep_done = threading.Event()
_startup_lock = threading.Lock()


@HUEY.on_startup()
def sweep_on_start() -> None:
    """Recover right away after a crash instead of waiting for the next periodic sweep, and
    listen for accepted events' wakes on PostgreSQL (delivery/wakes.py); once per process,
    although every worker thread runs startup hooks."""
    with _startup_lock:
        if _startup_sweep_done.is_set():
            return
        _startup_sweep_done.set()
    try:
        sweep_now()
    except Exception:
        logger.exception("Startup sweep failed")
    finally:
        from django.db import close_old_connections

        close_old_connections()
    if ingest.wake_by_notify():
        wakes.start(wake_accounts)

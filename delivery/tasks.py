"""Huey tasks: thin transports that take ids and call one service.

Huey has no acknowledgement: a task popped by a worker that dies is gone. The database row is
the outbox, and `sweep` (every minute, and once when a worker starts) re-enqueues whatever the
queue lost. `sweep` and `purge` have a higher priority than deliveries, so a worker takes them
before a backlog of queued deliveries (the queue storage must support priorities: Huey's
SqliteHuey and PriorityRedisHuey do; plain RedisHuey refuses them)."""

import logging
import threading

from huey import crontab
from huey.contrib.djhuey import HUEY, db_periodic_task, db_task

from delivery import services
from identity.auth import tokens_purge

logger = logging.getLogger(__name__)


@db_task()
def deliver(log_id: int) -> None:
    """Send delivery log `log_id` once if it is due (see services.log_deliver)."""
    services.log_deliver(log_id=log_id)


# Maintenance is taken from the queue before any delivery (Huey's SQLite and priority-Redis
# storages dequeue by priority, then in order): recovery never waits behind a backlog.
MAINTENANCE_PRIORITY = 100


@db_periodic_task(crontab(minute="*"), priority=MAINTENANCE_PRIORITY)
def sweep() -> None:
    """Re-enqueue overdue and abandoned deliveries."""
    services.logs_sweep()


@db_periodic_task(crontab(minute="17", hour="3"), priority=MAINTENANCE_PRIORITY)
def purge() -> None:
    """Delete logs, attempts and orphan events past DELIVERY_LOG_RETENTION_DAYS, and expired
    user tokens."""
    counts = services.logs_purge()
    counts["tokens"] = tokens_purge()
    logger.info("Retention purge: %s", counts)


_startup_sweep_done = threading.Event()
_startup_lock = threading.Lock()


@HUEY.on_startup()
def sweep_on_start() -> None:
    """Recover right away after a crash instead of waiting for the next periodic sweep
    (once per process, although every worker thread runs startup hooks)."""
    with _startup_lock:
        if _startup_sweep_done.is_set():
            return
        _startup_sweep_done.set()
    try:
        services.logs_sweep()
    except Exception:
        logger.exception("Startup sweep failed")
    finally:
        from django.db import close_old_connections

        close_old_connections()

"""PostgreSQL drops the worker's connection while it is sending a delivery.

The request reaches the destination, but the worker cannot record the outcome: its
connection was terminated (`pg_terminate_backend`, what a database restart or failover does to
every client). The log must not stay stuck in `sending`: its lease runs out, the sweeper takes
it back, a new try delivers it, and the log ends `success`. The destination got the request
twice with the same `webhook-id` (at-least-once; receivers de-duplicate), and the attempt log
shows both tries: the one whose outcome could not be recorded (outcome unknown, written by the
sweeper) and the one that succeeded.
"""

import time

from django.db import connection
from django.test import override_settings
from django.utils import timezone

from delivery import tasks
from delivery.models import DeliveryAttempt, DeliveryLog, LogStatus
from identity.models import Account
from tests.delivery.conftest import sink_destination
from tests.faults.conftest import SERVICES_ONLY
from tests.processes import Processes
from tests.sink import Sink

pytestmark = SERVICES_ONLY

SEND_SECONDS = 1.5  # the sink's answer time: the window in which the connection is cut
# The worker's lease on a `sending` log: connect + read timeout + sweep grace = 1 + 2.5 + 1 s.
WORKER_ENV = {"DELIVERY_READ_TIMEOUT": "2.5", "DELIVERY_SWEEP_GRACE_SECONDS": "1"}


def terminate_other_backends() -> int:
    """Cut every other connection to the test database; returns how many were cut."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        (count,) = cursor.fetchone()
    return int(count)


def test_connection_dropped_mid_delivery_is_retried_not_stuck(
    processes: Processes, sink: Sink, account: Account
) -> None:
    destination = sink_destination(account, sink, f"/slow/{SEND_SECONDS}")
    worker = processes.worker(workers=2, **WORKER_ENV)
    tasks.event_accept(account_id=account.pk, event_id="cut-1", payload={"n": 1}, size=8)
    processes.wait_until(
        lambda: DeliveryLog.objects.filter(destination=destination).exists(),
        timeout=30,
        what="the worker to fan the event out",
    )
    [log] = DeliveryLog.objects.filter(destination=destination)

    # The worker is waiting for the sink's answer: its database connection is idle.
    sink.wait_for(lambda: len(sink.received()) == 1, timeout=30)
    assert DeliveryLog.objects.get(pk=log.pk).status == LogStatus.SENDING
    assert terminate_other_backends() >= 1

    # Its outcome cannot be written: the claim stays until the lease ends.
    lease_end = DeliveryLog.objects.get(pk=log.pk).next_attempt_at
    assert lease_end is not None
    processes.wait_until(
        lambda: "OperationalError" in worker.output(),
        timeout=30,
        what="the worker to fail writing the outcome",
    )
    log.refresh_from_db()
    assert (log.status, log.attempt_count) == (LogStatus.SENDING, 0)
    assert not DeliveryAttempt.objects.exists()

    # The sweeper (each worker runs it every minute) takes back a send whose lease ran out.
    processes.wait_until(
        lambda: timezone.now() > lease_end, timeout=30, what="the lease to run out"
    )
    with override_settings(DELIVERY_SWEEP_GRACE_SECONDS=1):
        assert tasks.sweep_now() == 1
    started = time.monotonic()
    processes.wait_until(
        lambda: DeliveryLog.objects.get(pk=log.pk).status == LogStatus.SUCCESS,
        timeout=30,
        what="the retried delivery to succeed",
    )
    print(f"\nredelivered {time.monotonic() - started:.1f} s after the sweep")

    log.refresh_from_db()
    assert (log.attempt_count, log.last_status_code, log.last_error) == (2, 200, "")
    assert list(
        DeliveryAttempt.objects.values_list("log_id", "number", "status_code", "error_class")
    ) == [(log.pk, 1, None, "OutcomeUnknown"), (log.pk, 2, 200, "")]
    first, second = sink.received()
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == log.webhook_id
    # The worker recovered its connection by itself: it keeps delivering.
    tasks.event_accept(account_id=account.pk, event_id="cut-2", payload={"n": 2}, size=8)
    processes.wait_until(
        lambda: DeliveryLog.objects.filter(
            event__event_id="cut-2", status=LogStatus.SUCCESS
        ).exists(),
        timeout=30,
        what="the next delivery to succeed",
    )
    assert worker.alive()

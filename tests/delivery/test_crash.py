"""A queue worker killed with SIGKILL in the middle of a burst loses no delivery: Huey has no
acknowledgement, so the tasks it held are gone, but the database rows are the outbox and the
sweeper re-enqueues them. What may happen is a duplicate send (a request that reached the sink
but whose result was never recorded); receivers de-duplicate by `webhook-id`, and the test
bounds how many there can be. The attempt log records each send the kill cut short as a lost
try ("outcome unknown") when the sweeper takes the log back.

Services run only (PostgreSQL + Redis + real `run_huey` processes)."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from huey import Huey

from delivery import engine, tasks
from delivery.models import DeliveryAttempt, DeliveryLog, LogStatus
from identity.models import Account
from tests.delivery.conftest import sink_destination
from tests.processes import Processes
from tests.sink import Sink

pytestmark = [
    pytest.mark.slow,
    pytest.mark.services,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not settings.REDIS_URL,
        reason="needs a separate run_huey process on a shared queue: REDIS_URL is not set",
    ),
]

EVENTS = 500
WORKER_THREADS = 4


def test_killed_worker_loses_no_delivery(
    processes: Processes, real_queue: Huey, sink: Sink, account: Account
) -> None:
    destination = sink_destination(
        account, sink, "/slow/0.01"
    )  # slow enough that sends are in flight
    # The burst is accepted first, so the worker has a backlog when it dies. Accepted events
    # enqueue to the real queue (the `processes` fixture turns immediate mode off).
    for n in range(EVENTS):
        tasks.event_accept(account_id=account.pk, event_id=f"burst-{n}", payload={"n": n}, size=10)
    # The workers' own sweeps would re-enqueue the whole backlog (queued longer than a 1 s
    # grace): with the default grace they leave the recovery to the explicit sweep below.
    first = processes.worker(workers=WORKER_THREADS, DELIVERY_SWEEP_GRACE_SECONDS="60")
    processes.wait_until(
        lambda: len(sink.received()) >= EVENTS // 5,
        timeout=30,
        what=f"{EVENTS // 5} deliveries before the kill",
    )

    first.kill()
    received_at_kill = len(sink.received())
    abandoned = set(
        DeliveryLog.objects.filter(status=LogStatus.SENDING).values_list("pk", flat=True)
    )
    sending_at_kill = len(abandoned)
    done_at_kill = DeliveryLog.objects.filter(status=LogStatus.SUCCESS).count()
    assert done_at_kill < EVENTS, "the burst finished before the kill: nothing was tested"

    processes.worker(workers=WORKER_THREADS, DELIVERY_SWEEP_GRACE_SECONDS="60")

    def drained() -> bool:
        sending = DeliveryLog.objects.filter(status=LogStatus.SENDING).values_list("pk", flat=True)
        return real_queue.pending_count() == 0 and set(sending) <= abandoned

    processes.wait_until(drained, timeout=60, what="the new worker to work off the backlog")
    # The killed worker's lane slot lasts one lease past its last claim: free it as its
    # expiry would (the sweep below moves the clock past the lease too).
    assert engine.lane_running(destination.pk)
    engine.free_slot(destination.pk, 0)
    # What the sweeper does once their lease ran out: the killed worker's `sending` rows, and
    # the rows of any task it had popped but not claimed, are enqueued again.
    recovered = tasks.sweep_now(now=timezone.now() + timedelta(minutes=5))
    processes.wait_until(
        lambda: DeliveryLog.objects.filter(status=LogStatus.SUCCESS).count() == EVENTS,
        timeout=90,
        what=f"all {EVENTS} deliveries to succeed",
    )

    expected = {log.webhook_id for log in DeliveryLog.objects.all()}
    counts = sink.webhook_ids()
    duplicates = sum(counts.values()) - len(counts)
    print(
        f"\n{EVENTS} events; killed after {received_at_kill} requests with {done_at_kill} logs "
        f"done and {sending_at_kill} sending; the sweeper re-enqueued {recovered} afterwards; "
        f"{sum(counts.values())} requests, {duplicates} duplicates: "
        f"{sorted(k for k, v in counts.items() if v > 1)}"
    )
    assert len(expected) == EVENTS
    assert set(counts) == expected  # every delivery arrived, and nothing else
    assert duplicates <= sending_at_kill + WORKER_THREADS
    # The attempt log never under-counts: each log has its successful try, and each send the
    # kill cut short (its lease ran out) is recorded as a lost try with an unknown outcome.
    attempts: dict[int, list[tuple[int, int | None, str]]] = {}
    for log_id, number, code, error_class in DeliveryAttempt.objects.order_by(
        "log_id", "number"
    ).values_list("log_id", "number", "status_code", "error_class"):
        attempts.setdefault(log_id, []).append((number, code, error_class))
    lost_then_sent = [(1, None, "OutcomeUnknown"), (2, 200, "")]
    assert attempts == {
        pk: lost_then_sent if pk in abandoned else [(1, 200, "")]
        for pk in DeliveryLog.objects.values_list("pk", flat=True)
    }
    assert DeliveryLog.objects.filter(attempt_count=2).count() == sending_at_kill

"""A queue worker killed with SIGKILL in the middle of a burst loses no delivery: Huey has no
acknowledgement, so the tasks it held are gone, but the database rows are the outbox and the
sweeper re-enqueues them. What may happen is a duplicate send (a request that reached the sink
but whose result was never recorded); receivers de-duplicate by `webhook-id`, and the test
bounds how many there can be.

Services run only (PostgreSQL + Redis + real `run_huey` processes)."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from huey import Huey

from delivery import services
from delivery.models import DeliveryLog, LogStatus
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
    sink_destination(account, sink, "/slow/0.01")  # slow enough that sends are in flight
    # The burst is accepted first, so the worker has a backlog when it dies. Accepted events
    # enqueue to the real queue (the `processes` fixture turns immediate mode off).
    for n in range(EVENTS):
        services.event_ingest(
            account_id=account.pk, event_id=f"burst-{n}", payload={"n": n}, size=10
        )
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
    # What the sweeper does once their lease ran out: the killed worker's `sending` rows, and
    # the rows of any task it had popped but not claimed, are enqueued again.
    recovered = services.logs_sweep(now=timezone.now() + timedelta(minutes=5))
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
    # Sent once = one recorded attempt (an attempt cut short by the kill is never recorded).
    duplicated = [int(k.removeprefix("msg_")) for k, v in counts.items() if v > 1]
    once = DeliveryLog.objects.exclude(pk__in=duplicated)
    assert set(once.values_list("attempt_count", flat=True)) == {1}

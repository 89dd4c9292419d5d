"""Maintenance never waits behind delivery work: the sweeper and retention are enqueued with a
higher priority than deliveries, so a worker takes them before any queued delivery (Huey's
SQLite and priority-Redis storages both dequeue by priority, then in order)."""

from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone
from huey import Huey, PriorityRedisHuey, SqliteHuey
from huey.contrib.djhuey import HUEY

from delivery import tasks
from delivery.models import DeliveryLog, LogStatus
from identity.models import Account
from tests.delivery.conftest import due_log, sink_destination
from tests.processes import Processes
from tests.sink import Sink


def dequeued_names(queue: Huey) -> list[str]:
    """Task names in the order a worker would take them from `queue`'s storage."""
    names = []
    while (data := queue.storage.dequeue()) is not None:
        names.append(HUEY.deserialize_task(data).name)
    return names


def fill(queue: Huey) -> None:
    """Five deliveries, then a sweep, then a purge, then one more delivery."""
    tasks_in_order = [*(tasks.deliver.s(n) for n in range(5)), tasks.sweep.s(), tasks.purge.s()]
    for task in [*tasks_in_order, tasks.deliver.s(9)]:
        queue.storage.enqueue(HUEY.serialize_task(task), task.priority)


def test_maintenance_tasks_have_a_higher_priority_than_deliveries() -> None:
    assert (tasks.deliver.s(1).priority or 0) == 0
    assert tasks.sweep.s().priority == tasks.purge.s().priority == tasks.MAINTENANCE_PRIORITY
    assert tasks.MAINTENANCE_PRIORITY > 0


def test_sqlite_queue_hands_out_maintenance_before_queued_deliveries(tmp_path: Path) -> None:
    queue = SqliteHuey("priority-test", filename=str(tmp_path / "huey.sqlite3"), results=False)
    fill(queue)
    names = dequeued_names(queue)
    assert names[:2] == ["sweep", "purge"]
    assert names[2:] == ["deliver"] * 6


@pytest.mark.skipif(not settings.REDIS_URL, reason="REDIS_URL is not set")
def test_redis_queue_hands_out_maintenance_before_queued_deliveries() -> None:
    queue = PriorityRedisHuey(f"{settings.TEST_RUN_ID}-priority", url=settings.REDIS_URL)
    queue.flush()
    try:
        fill(queue)
        names = dequeued_names(queue)
    finally:
        queue.flush()
    assert names[:2] == ["sweep", "purge"]
    assert names[2:] == ["deliver"] * 6


BACKLOG = 40


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not settings.REDIS_URL, reason="needs a real run_huey on Redis")
def test_a_sweep_runs_before_the_backlog_of_deliveries_drains(
    processes: Processes, sink: Sink, account: Account
) -> None:
    # One worker thread, a backlog of slow deliveries, then an abandoned send for the sweeper.
    processes.worker(workers=1, DELIVERY_SWEEP_GRACE_SECONDS="60")
    sink_destination(account, sink, "/slow/0.2")
    for n in range(BACKLOG):
        tasks.event_accept(account_id=account.pk, event_id=f"b-{n}", payload={"n": n}, size=8)
    processes.wait_until(lambda: len(sink.received()) >= 1, timeout=30, what="the first send")
    backlog = DeliveryLog.objects.filter(event__event_id__startswith="b-")
    processes.wait_until(
        lambda: backlog.count() == BACKLOG, timeout=30, what="the backlog to be fanned out"
    )
    abandoned = due_log(
        sink_destination(account, sink, "/fast"),
        status=LogStatus.SENDING,
        next_attempt_at=timezone.now(),
    )

    tasks.sweep()  # enqueued behind the backlog, as the periodic scheduler does

    processes.wait_until(
        lambda: DeliveryLog.objects.get(pk=abandoned.pk).status != LogStatus.SENDING,
        timeout=60,
        what="the sweeper to take the abandoned send back",
    )
    waiting = backlog.exclude(status=LogStatus.SUCCESS)
    still_queued = waiting.count()
    print(f"\nthe sweep ran with {still_queued} of {BACKLOG} deliveries still to do")
    assert still_queued >= BACKLOG // 2
    processes.wait_until(
        lambda: (
            not waiting.exists()
            and DeliveryLog.objects.get(pk=abandoned.pk).status == LogStatus.SUCCESS
        ),
        timeout=60,
        what="everything to be delivered",
    )

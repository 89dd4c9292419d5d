"""Destination health across real worker processes on one Redis: a rate limit holds for the
sum of two processes' lanes, and an open breaker lets one probe through per half-open period
however many worker threads and lanes could send."""

import time
from typing import Any

from delivery import tasks
from delivery.models import Destination, Notice
from identity.models import Account
from tests.delivery.conftest import due_log, sink_destination
from tests.faults.conftest import SERVICES_ONLY
from tests.processes import Processes
from tests.sink import Sink

pytestmark = SERVICES_ONLY

RATE = 20  # requests per second
LOGS = 120  # more than a batch (50): the lane of slot 0 starts the one of slot 1


def test_rate_limit_holds_across_two_worker_processes(
    processes: Processes, sink: Sink, real_queue: Any, account: Account
) -> None:
    destination = sink_destination(account, sink)
    destination.rate_limit, destination.max_in_flight = RATE, 2
    destination.save()
    for _ in range(LOGS):
        due_log(destination)
    # One thread each: while the first lane sleeps for its rate, its process has no thread
    # for the second lane, which the other process runs.
    processes.worker(workers=1)
    processes.worker(workers=1)

    tasks.wake_destinations([destination.pk])
    processes.wait_until(
        lambda: len(sink.received()) == LOGS, timeout=LOGS / RATE * 3, what="every delivery"
    )

    arrivals = [request.at for request in sink.received()]
    rate = (LOGS - 1) / (arrivals[-1] - arrivals[0])
    print(f"\n{LOGS} deliveries at {rate:.2f}/s (limit {RATE}/s)")
    assert RATE * 0.9 <= rate <= RATE * 1.1
    assert sink.webhook_ids().most_common(1)[0][1] == 1  # each sent once


def test_one_probe_per_half_open_period_across_processes(
    processes: Processes, sink: Sink, real_queue: Any, account: Account
) -> None:
    # 20 answers of 200 make the destination fast (batches, more lanes), then only 500s: it
    # opens once 70 % of the window's tries have failed (the 47th 500).
    destination: Destination = sink_destination(account, sink, "/status/" + "200," * 20 + "500")
    destination.max_in_flight = 4
    destination.save()
    for _ in range(300):
        due_log(destination)
    env = {"DESTINATION_BREAKER_COOLDOWN_SECONDS": "1", "DELIVERY_RETRY_SCHEDULE": "60"}
    processes.worker(workers=4, **env)
    processes.worker(workers=4, **env)

    tasks.wake_destinations([destination.pk])
    opened = Notice.objects.filter(destination=destination, kind="breaker_opened")
    # Opened, then probes after 1, 2 and 4 s: each fails and opens it again.
    processes.wait_until(lambda: opened.count() >= 4, timeout=30, what="three failed probes")

    probes = opened.count() - 1
    first = opened.order_by("at").first()
    assert first is not None
    # The sink stamps arrivals on the monotonic clock, notices are wall-clock times.
    offset = time.time() - time.monotonic()
    after = [r for r in sink.received() if r.at + offset > first.at.timestamp() + 0.5]
    # Past the lanes' last flush (0.25 s) after it opened, only probes arrive: one per
    # half-open period (the last one may have arrived before its failure was recorded).
    print(f"\n{len(sink.received())} requests; {probes} failed probes, {len(after)} requests since")
    assert len(after) in (probes, probes + 1)
    assert Notice.objects.filter(destination=destination).count() == opened.count()  # no close

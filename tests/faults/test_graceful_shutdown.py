"""SIGTERM to a worker started with `--graceful-signal TERM` (how the README and `make worker`
run production workers) lets the deliveries in flight finish and be recorded before the process
exits 0: nothing is cut off, so nothing is sent twice. (A SIGKILL cannot be graceful; that case
is tests/delivery/test_crash.py.)"""

import signal

from delivery import tasks
from delivery.models import DeliveryAttempt, DeliveryLog, LogStatus
from identity.models import Account
from tests.delivery.conftest import sink_destination
from tests.faults.conftest import SERVICES_ONLY
from tests.processes import Processes
from tests.sink import Sink

pytestmark = SERVICES_ONLY

THREADS = 3
SEND_SECONDS = 2


def test_sigterm_lets_in_flight_deliveries_finish(
    processes: Processes, sink: Sink, account: Account
) -> None:
    # One destination per thread: a destination's deliveries go one at a time (its lane).
    for _ in range(THREADS):
        sink_destination(account, sink, f"/slow/{SEND_SECONDS}")
    worker = processes.worker(
        workers=THREADS,
        args=["--graceful-signal", "TERM", "--shutdown-timeout", "30"],
        DELIVERY_READ_TIMEOUT="10",
    )
    tasks.event_accept(account_id=account.pk, event_id="term", payload={"n": 1}, size=8)
    # Every thread is waiting for the sink's answer.
    sink.wait_for(lambda: len(sink.received()) == THREADS, timeout=30)
    assert set(DeliveryLog.objects.values_list("status", flat=True)) == {LogStatus.SENDING}

    worker.popen.send_signal(signal.SIGTERM)
    exit_code = worker.popen.wait(timeout=SEND_SECONDS + 20)

    assert exit_code == 0, worker.report()
    assert "Shutting down gracefully" in worker.output()
    logs = DeliveryLog.objects.all()
    assert [(log.status, log.attempt_count, log.last_status_code) for log in logs] == [
        (LogStatus.SUCCESS, 1, 200)
    ] * THREADS
    assert DeliveryAttempt.objects.count() == THREADS
    assert sorted(sink.webhook_ids().values()) == [1] * THREADS  # each sent once

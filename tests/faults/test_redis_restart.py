"""Redis crashes and comes back during a burst of incoming events.

The server and worker processes use a private Redis (tests/faults/conftest.py) that the test
kills (SIGKILL, nothing kept on disk) and restarts on the same port. What must hold:

* while Redis is down, `incoming_data` answers `503 unavailable` with `Retry-After` — never a
  500 — and stores nothing; every `202` was committed first; the first request after Redis is
  back is accepted;
* the tasks that were waiting in Redis are gone with it, but the delivery rows are the outbox:
  one sweep (what every worker runs each minute) re-enqueues them, and every accepted event is
  delivered exactly once.
"""

import time
from typing import Any

import requests
from django.db.models import Q
from django.test import override_settings
from huey import PriorityRedisHuey
from huey.contrib.djhuey import HUEY

from delivery import tasks
from delivery.models import DeliveryLog, Event, LogStatus
from identity.models import Account
from tests.delivery.conftest import sink_destination
from tests.faults.conftest import SERVICES_ONLY, PrivateRedis, post_event, queue_on
from tests.processes import Processes
from tests.sink import Sink

pytestmark = SERVICES_ONLY

BEFORE = 60  # accepted before the crash; the sink is slow enough that most are still queued
OUTAGE_SECONDS = 2.0
AFTER = 20  # accepted after Redis is back
PHASES = ("before", "outage", "after")
UNAVAILABLE = {
    "success": False,
    "code": "unavailable",
    "message": "Temporarily unavailable; retry.",
}


def test_redis_restart_during_a_burst_loses_no_accepted_event(
    processes: Processes,
    private_redis: PrivateRedis,
    sink: Sink,
    account: Account,
    app_secret: str,
) -> None:
    sink_destination(account, sink, "/slow/0.15")
    # A rate limit that never triggers, so that every request also counts in Redis.
    env = {"REDIS_URL": private_redis.url, "INCOMING_RATE_LIMIT": "100000"}
    server = processes.server("daphne", wait=False, **env)
    worker = processes.worker(workers=2, wait=False, **env)
    server.wait_ready()
    worker.wait_ready()
    session = requests.Session()
    outcomes: list[dict[str, Any]] = []

    def post(phase: str, n: int) -> int:
        event_id = f"{phase}-{n}"
        started = time.monotonic()
        response = post_event(session, server.url, app_secret, event_id, {"n": n, "phase": phase})
        outcomes.append(
            {
                "phase": phase,
                "event_id": event_id,
                "status": response.status_code,
                "body": response.json(),
                "retry_after": response.headers.get("Retry-After"),
                "seconds": time.monotonic() - started,
            }
        )
        return response.status_code

    for n in range(BEFORE):
        assert post("before", n) == 202, outcomes[-1]
    undelivered_at_crash = DeliveryLog.objects.exclude(status=LogStatus.SUCCESS).count()

    private_redis.kill()
    deadline = time.monotonic() + OUTAGE_SECONDS
    n = 0
    while time.monotonic() < deadline:
        post("outage", n)
        n += 1

    private_redis.start()
    for n in range(AFTER):
        post("after", n)

    # What happens, exactly: while Redis is down every request (each one needs the app-secret
    # lookup in the cache) is refused cleanly, and from the first request after it is back,
    # every one is accepted again.
    statuses = {phase: {o["status"] for o in outcomes if o["phase"] == phase} for phase in PHASES}
    assert statuses == {"before": {202}, "outage": {503}, "after": {202}}, outcomes
    refused = [o for o in outcomes if o["status"] == 503]
    assert all(o["body"] == UNAVAILABLE and o["retry_after"] == "5" for o in refused)
    accepted = {o["event_id"] for o in outcomes if o["status"] == 202}
    # A 202 means committed; a 503 wrote nothing.
    assert set(Event.objects.values_list("event_id", flat=True)) == accepted
    # Each has its log, or waits for its fan-out (one query: one snapshot).
    fanned_or_pending = Q(fanned_out_at=None) | Q(logs__isnull=False)
    assert Event.objects.filter(fanned_or_pending).distinct().count() == len(accepted)
    assert DeliveryLog.objects.count() <= len(accepted)

    # The worker works off what reached the new Redis; the tasks queued at the crash are gone.
    private_queue = PriorityRedisHuey(HUEY.name, url=private_redis.url)
    processes.wait_until(
        lambda: (
            private_queue.pending_count() == 0
            and not DeliveryLog.objects.filter(status=LogStatus.SENDING).exists()
        ),
        timeout=60,
        what="the worker to drain the restarted queue",
    )
    lost = DeliveryLog.objects.filter(status=LogStatus.QUEUED).count()

    # One sweep, as the workers' periodic sweep would do (with their 1 s grace).
    with queue_on(private_redis.url), override_settings(DELIVERY_SWEEP_GRACE_SECONDS=1):
        swept = tasks.sweep_now()
    processes.wait_until(
        lambda: DeliveryLog.objects.filter(status=LogStatus.SUCCESS).count() == len(accepted),
        timeout=60,
        what=f"all {len(accepted)} accepted events to be delivered",
    )

    expected = {log.webhook_id for log in DeliveryLog.objects.all()}
    counts = sink.webhook_ids()
    outage = [o for o in outcomes if o["phase"] == "outage"]
    print(
        f"\n{len(outcomes)} posts: {len(accepted)} accepted (202), {len(refused)} refused (503); "
        f"during the {OUTAGE_SECONDS} s outage {len(outage)} posts, "
        f"{sum(o['status'] == 202 for o in outage)} accepted, slowest answer "
        f"{max(o['seconds'] for o in outage):.2f} s; {undelivered_at_crash} undelivered at the "
        f"crash, {lost} lost with the queue, {swept} re-enqueued by the sweep; "
        f"{sum(counts.values())} requests at the sink for {len(counts)} deliveries"
    )
    assert undelivered_at_crash > 0
    # `lost` and `swept` may be 0: a lane woken by an event accepted after the restart
    # delivers its destination's whole backlog, the deliveries whose tasks died with Redis
    # included; what matters is below.
    assert set(counts) == expected  # every accepted event arrived, and nothing else
    assert max(counts.values()) == 1  # and once: the lost tasks had never run

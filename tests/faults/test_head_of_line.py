"""A destination that takes 30 s to answer holds one worker thread, and only that one: the
deliveries posted after it — to other destinations of the same account and to other
accounts — land at the sink within a second of being accepted, while the slow one is still
in flight. The test stops as soon as they have landed (it does not wait the 30 s)."""

import json
import time
from typing import Any

import requests

from delivery import destinations
from delivery.models import DeliveryLog, LogStatus
from identity.models import Account, User
from tests.conftest import Persona
from tests.delivery.conftest import sink_destination
from tests.factories import make_account
from tests.faults.conftest import SERVICES_ONLY, post_event
from tests.processes import Processes
from tests.sink import Sink

pytestmark = SERVICES_ONLY

THREADS = 4
PER_ACCOUNT = 6
LANDING_LIMIT = 1.0  # seconds from the 202 to the request at the sink


class TimedRequests(list[Any]):
    """The sink's request list, noting when each request arrived (monotonic clock)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: Any) -> None:
        self.times.append(time.monotonic())
        super().append(item)


def test_slow_destination_does_not_hold_up_other_deliveries(
    processes: Processes, sink: Sink, account: Account, app_secret: str, admin: Persona
) -> None:
    assert isinstance(admin.user, User)
    arrivals = TimedRequests()
    sink.requests = arrivals
    slow = sink_destination(account, sink, "/slow/30")
    other_account, other_secret = make_account(name="Other")
    sink_destination(other_account, sink, "/hook/other")
    server = processes.server("daphne", wait=False)
    processes.worker(workers=THREADS, DELIVERY_READ_TIMEOUT="40")
    server.wait_ready()
    session = requests.Session()

    assert post_event(session, server.url, app_secret, "slow-1", {"n": 0}).status_code == 202
    sink.wait_for(lambda: len(sink.received("/slow/30")) == 1, timeout=30)
    # From now on the account's events go to a fast destination of its own.
    destinations.destination_update(actor=admin.user, destination_id=slow.pk, is_active=False)
    destinations.destination_create(
        actor=admin.user, account_id=account.pk, url=f"{sink.url}/hook/same", http_method="POST"
    )

    posted_at: dict[str, float] = {}
    accepted_at: dict[str, float] = {}
    for n in range(PER_ACCOUNT):
        for token, name in ((app_secret, "same"), (other_secret, "other")):
            event_id = f"{name}-{n}"
            posted_at[event_id] = time.monotonic()
            response = post_event(session, server.url, token, event_id, {"event": event_id})
            assert response.status_code == 202, response.text
            accepted_at[event_id] = time.monotonic()
    sink.wait_for(lambda: len(sink.received()) == 1 + 2 * PER_ACCOUNT, timeout=30)

    landed_after: dict[str, float] = {}
    after_post: dict[str, float] = {}
    with sink.lock:
        for request, at in zip(arrivals, arrivals.times, strict=True):
            if request.path.startswith("/hook/"):
                event_id = json.loads(request.body)["event"]
                # Negative when the delivery landed before the client had read its 202.
                landed_after[event_id] = at - accepted_at[event_id]
                after_post[event_id] = at - posted_at[event_id]
    slow_log = DeliveryLog.objects.get(destination=slow)
    print(
        f"\nslowest of {len(landed_after)} deliveries landed {max(landed_after.values()):.3f} s "
        f"after its 202, with the 30 s delivery in flight ({slow_log.status})"
    )
    assert sorted(landed_after) == sorted(accepted_at)
    assert all(seconds < LANDING_LIMIT for seconds in landed_after.values()), landed_after
    assert all(seconds > 0 for seconds in after_post.values()), after_post
    assert slow_log.status == LogStatus.SENDING  # still waiting for its answer
    # Nothing was held back by it: every other delivery has already succeeded.
    others = DeliveryLog.objects.exclude(pk=slow_log.pk)
    assert others.count() == 2 * PER_ACCOUNT
    processes.wait_until(
        lambda: set(others.values_list("status", flat=True)) == {LogStatus.SUCCESS},
        timeout=10,
        what="the other deliveries to be recorded",
    )

"""Issue 9, target 7: destinations that hang until the read timeout do not delay the healthy
destination of another account, with the default settings.

Ten destinations that answer only after twice DELIVERY_READ_TIMEOUT (in one account, or one
in each of ten accounts) get 50 events each; while their deliveries hang, a healthy
destination of another account gets 20 events, one every 0.25 s: each of them must land at
the sink within a second of its 202, and the hanging deliveries must still be in flight when
the last one lands. One daphne server and ONE `run_huey` worker with what `make worker` starts
by default (its thread count is read from the Makefile) and the delivery settings' defaults
(tests/processes.py shortens timeouts and retries for other tests; this one puts them back).
The test stops as soon as the healthy deliveries have landed: it never waits for the slow
ones."""

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypedDict

import pytest
import requests
from django.conf import settings

from delivery.models import DeliveryLog, Destination, LogStatus
from tests.delivery.conftest import sink_destination
from tests.factories import make_account
from tests.faults.conftest import SERVICES_ONLY, post_event
from tests.processes import Processes
from tests.sink import Sink

pytestmark = SERVICES_ONLY

SLOW_DESTINATIONS = 10
SLOW_EVENTS = 50  # per slow destination
HEALTHY_EVENTS = 20
SPACING = 0.25  # seconds between two healthy events
LANDING_LIMIT = 1.0  # seconds from a healthy event's 202 to its request at the sink
LATE_MARGIN = 3.0  # how long past the limit late deliveries are waited for, to report them
IN_FLIGHT = (LogStatus.QUEUED, LogStatus.SENDING, LogStatus.RETRYING)


def make_worker_threads() -> int:
    """The number of threads `make worker` gives `run_huey` when WORKERS is not set: the
    `--workers`/`-w` value of the Makefile's `worker` recipe, a shell default (`${X:-16}`)
    or a make variable (`$(X)` with `X ?= 16`) resolved."""
    makefile = (Path(settings.BASE_DIR) / "Makefile").read_text()
    recipe = re.search(r"^worker:.*\n((?:\t.*\n?)+)", makefile, re.MULTILINE)
    assert recipe, "no `worker` target in the Makefile"
    option = re.search(r"(?:--workers|-w)[ =](\S+)", recipe.group(1))
    assert option, f"no --workers in the Makefile's worker recipe:\n{recipe.group(1)}"
    value = option.group(1)
    while not value.isdigit():
        if shell := re.fullmatch(r"\$\$\{\w+:-(.+)\}", value):
            value = shell.group(1)
        elif make := re.fullmatch(r"\$[({](\w+)[)}]", value):
            assigned = re.search(rf"^{make.group(1)}\s*[?:]?=\s*(\S+)", makefile, re.MULTILINE)
            assert assigned, f"{make.group(1)} is not set in the Makefile"
            value = assigned.group(1)
        else:
            raise AssertionError(f"cannot read the worker thread count from {value!r}")
    return int(value)


class DeliveryDefaults(TypedDict):
    DELIVERY_CONNECT_TIMEOUT: str
    DELIVERY_READ_TIMEOUT: str
    DELIVERY_RETRY_SCHEDULE: str
    DELIVERY_SWEEP_GRACE_SECONDS: str


def default_delivery_settings() -> DeliveryDefaults:
    """The environment that undoes service_env's short timeouts and retries: the values this
    process has, which are the defaults (the test settings do not change them)."""
    return DeliveryDefaults(
        DELIVERY_CONNECT_TIMEOUT=str(settings.DELIVERY_CONNECT_TIMEOUT),
        DELIVERY_READ_TIMEOUT=str(settings.DELIVERY_READ_TIMEOUT),
        DELIVERY_RETRY_SCHEDULE=",".join(f"{s:g}" for s in settings.DELIVERY_RETRY_SCHEDULE),
        DELIVERY_SWEEP_GRACE_SECONDS=str(settings.DELIVERY_SWEEP_GRACE_SECONDS),
    )


@pytest.mark.parametrize("slow_accounts", [1, 10], ids=["one-slow-account", "ten-slow-accounts"])
def test_hanging_destinations_do_not_delay_a_healthy_one_of_another_account(
    processes: Processes, sink: Sink, slow_accounts: int
) -> None:
    slow_path = f"/slow/{2 * settings.DELIVERY_READ_TIMEOUT:g}"
    slow_tokens: list[str] = []
    slow_destinations: list[Destination] = []
    for _ in range(slow_accounts):
        account, token = make_account()
        slow_tokens.append(token)
        slow_destinations += [
            sink_destination(account, sink, slow_path)
            for _ in range(SLOW_DESTINATIONS // slow_accounts)
        ]
    healthy_account, healthy_token = make_account(name="Healthy")
    sink_destination(healthy_account, sink, "/hook/healthy")
    server = processes.server("daphne", wait=False, **default_delivery_settings())
    processes.worker(workers=make_worker_threads(), **default_delivery_settings())
    server.wait_ready()

    def post_slow(token: str) -> list[int]:
        with requests.Session() as session:
            return [
                post_event(session, server.url, token, f"slow-{n}", {"slow": n}).status_code
                for n in range(SLOW_EVENTS)
            ]

    with ThreadPoolExecutor(len(slow_tokens)) as pool:
        statuses = [code for codes in pool.map(post_slow, slow_tokens) for code in codes]
    assert statuses == [202] * (SLOW_EVENTS * slow_accounts)
    slow_logs = DeliveryLog.objects.filter(destination__in=slow_destinations)
    processes.wait_until(
        lambda: slow_logs.count() == SLOW_DESTINATIONS * SLOW_EVENTS,
        timeout=30,
        what="the slow events to be fanned out",
    )
    processes.wait_until(
        lambda: bool(sink.received(slow_path)), timeout=30, what="a slow delivery to hang"
    )

    session = requests.Session()
    accepted_at: dict[str, float] = {}
    start = time.monotonic()
    for n in range(HEALTHY_EVENTS):
        time.sleep(max(0.0, start + n * SPACING - time.monotonic()))  # pacing, not waiting
        event_id = f"healthy-{n}"
        response = post_event(session, server.url, healthy_token, event_id, {"event": event_id})
        assert response.status_code == 202, response.text
        accepted_at[event_id] = time.monotonic()
    deadline = max(accepted_at.values()) + LANDING_LIMIT + LATE_MARGIN
    while len(sink.received("/hook/healthy")) < HEALTHY_EVENTS and time.monotonic() < deadline:
        time.sleep(0.02)

    now = time.monotonic()
    landed_after: dict[str, float] = {}
    for request in sink.received("/hook/healthy"):
        event_id = json.loads(request.body)["event"]
        landed_after[event_id] = request.at - accepted_at[event_id]
    # Slow requests sent before the first healthy event that the worker is still waiting on
    # (it gives up after DELIVERY_READ_TIMEOUT; the sink answers after twice that).
    hanging = [
        r
        for r in sink.received(slow_path)
        if r.at <= start and now - r.at < settings.DELIVERY_READ_TIMEOUT
    ]
    slow_logs = DeliveryLog.objects.filter(destination__in=slow_destinations)
    in_flight = slow_logs.filter(status__in=IN_FLIGHT).count()
    sending = slow_logs.filter(status=LogStatus.SENDING).count()
    late = {event_id: round(s, 3) for event_id, s in landed_after.items() if s >= LANDING_LIMIT}
    print(
        f"\n{len(landed_after)} of {HEALTHY_EVENTS} healthy deliveries landed, the slowest "
        f"{max(landed_after.values(), default=float('nan')):.3f} s after its 202; "
        f"{len(sink.received(slow_path))} slow requests so far ({len(hanging)} hanging since "
        f"before the first healthy event), {in_flight} slow logs in flight ({sending} sending)"
    )
    assert sorted(landed_after) == sorted(accepted_at), (
        f"{HEALTHY_EVENTS - len(landed_after)} healthy deliveries had not landed "
        f"{LANDING_LIMIT + LATE_MARGIN} s after the last 202; landed: {landed_after}"
    )
    assert late == {}, f"landed later than {LANDING_LIMIT} s after their 202: {late}"
    # The slow deliveries were in flight all along, and still are.
    assert hanging
    assert sending > 0
    assert in_flight > 0
    healthy_logs = DeliveryLog.objects.filter(destination__account=healthy_account)
    processes.wait_until(
        lambda: (
            list(healthy_logs.values_list("status", flat=True))
            == [LogStatus.SUCCESS] * HEALTHY_EVENTS
        ),
        timeout=10,
        what="the healthy deliveries to be recorded",
    )

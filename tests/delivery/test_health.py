"""Destination health: the circuit breaker's state sequence on a fake clock, deferral that
keeps the retry budget and the order, 410 and sustained failure disabling a destination, a
re-enable that resumes, and the figures `Destination.health` shows against a hand count."""

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from redis.exceptions import ConnectionError as RedisConnectionError

from delivery import engine, health, policy
from delivery.models import DeliveryLog, Destination, DisabledCause, LogStatus, Notice
from delivery.transport import Kind, Outcome
from identity.models import Account
from tests.conftest import GraphQL, Persona, error_codes, payload_codes
from tests.delivery.conftest import due_log, sink_destination, start
from tests.sink import Sink

pytestmark = pytest.mark.django_db(transaction=True)

T0 = datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)
FAIL = Outcome(Kind.TRANSIENT, 30, status_code=500)
TIMEOUT = Outcome(Kind.TRANSIENT, 15_000, error_class="ReadTimeout", error_message="timed out")
OK = Outcome(Kind.SUCCESS, 20, status_code=200)
REFUSED = Outcome(Kind.PERMANENT, 10, status_code=404)
GO, STOP = health.Verdict.GO, health.Verdict.STOP


@pytest.fixture
def destination(account: Account, sink: Sink) -> Destination:
    return sink_destination(account, sink)


def notices(destination: Destination) -> list[tuple[str, str]]:
    rows = Notice.objects.filter(destination=destination).order_by("at", "id")
    return [(n.kind, n.detail) for n in rows]


def observe(destination: Destination, outcomes: list[Outcome], at: datetime, **kw: Any) -> Any:
    return [health.observe(destination, [o], now=at, **kw) for o in outcomes]


# --- The breaker on a fake clock -------------------------------------------------------------


def test_breaker_opens_at_the_threshold_and_not_before(destination: Destination) -> None:
    # 9 tries: under the minimum, however many failed.
    assert observe(destination, [FAIL] * 9, T0) == [GO] * 9
    assert health.admit(destination.pk, now=T0) == health.GO
    assert notices(destination) == []
    # The 10th try, 10 of 10 failed: open; nothing is sent until the cool-down ends.
    assert observe(destination, [FAIL], T0) == [STOP]
    probe_at = T0 + timedelta(seconds=30)
    assert health.admit(destination.pk, now=T0) == health.Admission(
        go=False, defer_until=probe_at, look_again_at=probe_at
    )
    assert notices(destination) == [
        (
            "breaker_opened",
            "10 of 10 tries in the last 5 min failed; last error: HTTP 500; "
            "next probe at 2026-06-01T12:01:00+00:00",
        )
    ]


def test_breaker_counts_the_failure_ratio_over_the_window(destination: Destination) -> None:
    # 60 % failed: stays closed; the 70 % boundary opens it.
    assert observe(destination, [OK] * 4 + [FAIL] * 6, T0) == [GO] * 10
    # 7/11, 8/12, 9/13 failed: under 70 %; 10/14 = 71 %: open.
    assert observe(destination, [FAIL] * 4, T0) == [GO, GO, GO, STOP]


def test_breaker_window_slides(account: Account, sink: Sink) -> None:
    destination = sink_destination(account, sink)
    assert observe(destination, [FAIL] * 9, T0) == [GO] * 9
    # Five minutes on, those failures have left the window.
    later = T0 + timedelta(minutes=5)
    assert observe(destination, [FAIL] * 9, later) == [GO] * 9
    assert observe(destination, [FAIL], later) == [STOP]


def test_permanent_failures_never_trip_it(destination: Destination) -> None:
    assert observe(destination, [REFUSED] * 30, T0) == [GO] * 30
    assert health.admit(destination.pk, now=T0) == health.GO
    assert notices(destination) == []


def test_half_open_probe_then_growing_cool_down_then_close(destination: Destination) -> None:
    observe(destination, [FAIL] * 10, T0)
    probe_at = T0 + timedelta(seconds=30)
    # Half-open: one probe token (DESTINATION_BREAKER_PROBES = 1), whoever asks next waits.
    assert health.admit(destination.pk, now=probe_at) == health.Admission(go=True, probe=True)
    assert health.admit(destination.pk, now=probe_at) == health.Admission(
        go=False, look_again_at=probe_at + policy.lease()
    )
    # The probe fails: open again for twice as long.
    assert observe(destination, [TIMEOUT], probe_at, probe=True) == [STOP]
    second = probe_at + timedelta(seconds=60)
    assert health.admit(destination.pk, now=second - timedelta(seconds=1)).defer_until == second
    assert health.admit(destination.pk, now=second) == health.Admission(go=True, probe=True)
    # Tries made meanwhile by lanes that started before it opened change nothing.
    assert observe(destination, [OK], second) == [STOP]
    # The probe succeeds: closed (the lane makes the backlog due), and the old failures no
    # longer count.
    assert observe(destination, [OK], second, probe=True) == [health.Verdict.CLOSED]
    assert health.admit(destination.pk, now=second) == health.GO
    assert observe(destination, [FAIL] * 9, second) == [GO] * 9
    # Closing forgets the breaker's counts, not the figures: 10 + probe + straggler + probe + 9.
    (figures,) = health.figures([destination], now=second)
    assert (figures.attempts_1h, figures.failures_1h) == (22, 20)
    assert [kind for kind, _ in notices(destination)] == [
        "breaker_opened",
        "breaker_opened",
        "breaker_closed",
    ]
    assert notices(destination)[1][1] == (
        "The probe failed (ReadTimeout: timed out); next probe at 2026-06-01T12:02:00+00:00"
    )


def test_only_the_probe_budget_goes_through_concurrently(destination: Destination) -> None:
    observe(destination, [FAIL] * 10, T0)
    probe_at = T0 + timedelta(seconds=30)
    admitted: list[health.Admission] = []
    barrier = threading.Barrier(8)

    def ask() -> None:
        barrier.wait()
        admitted.append(health.admit(destination.pk, now=probe_at))
        connection.close()

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.go for a in admitted) == [False] * 7 + [True]


def test_breaker_off_counts_but_never_opens(destination: Destination, settings: Any) -> None:
    settings.DESTINATION_BREAKER = False
    assert observe(destination, [FAIL] * 20, T0) == [GO] * 20
    assert health.admit(destination.pk, now=T0) == health.GO
    (figures,) = health.figures([destination], now=T0)
    assert (figures.state, figures.attempts_1h, figures.consecutive_failures) == (
        health.State.DEGRADED,
        20,
        20,
    )


# --- Disabling -------------------------------------------------------------------------------


def test_only_failures_for_the_disable_window_disable_it(destination: Destination) -> None:
    assert observe(destination, [REFUSED], T0) == [GO]
    almost = T0 + timedelta(days=5) - timedelta(seconds=1)
    assert observe(destination, [REFUSED], almost) == [GO]
    assert observe(destination, [REFUSED], T0 + timedelta(days=5)) == [STOP]
    destination.refresh_from_db()
    assert (destination.is_active, destination.disabled_cause, destination.disabled_reason) == (
        False,
        DisabledCause.FAILING,
        "Every try has failed since 2026-06-01T12:00:30+00:00.",
    )
    assert notices(destination) == [
        ("disabled", "Every try has failed since 2026-06-01T12:00:30+00:00.")
    ]


def test_a_success_restarts_the_disable_window(destination: Destination) -> None:
    observe(destination, [REFUSED], T0)
    observe(destination, [OK], T0 + timedelta(days=1))
    assert observe(destination, [REFUSED], T0 + timedelta(days=5)) == [GO]
    destination.refresh_from_db()
    assert destination.is_active
    # The window starts again at the first failure after the success.
    assert observe(destination, [REFUSED], T0 + timedelta(days=10) - timedelta(seconds=1)) == [GO]
    assert observe(destination, [REFUSED], T0 + timedelta(days=10)) == [STOP]
    destination.refresh_from_db()
    assert destination.disabled_reason == "Every try has failed since 2026-06-06T12:00:30+00:00."


def test_410_disables_at_once_and_its_logs_wait_for_a_re_enable(
    account: Account, sink: Sink, gql: GraphQL, admin: Persona, normal_user: Persona
) -> None:
    destination = sink_destination(account, sink, "/status/410,200")
    logs = [due_log(destination) for _ in range(4)]

    run = start(destination)

    assert run.sent == 1
    assert run.wake_at is None
    assert len(sink.received()) == 1
    stored = DeliveryLog.objects.in_bulk([log.pk for log in logs])
    assert [(stored[log.pk].status, stored[log.pk].attempt_count) for log in logs] == [
        (LogStatus.FAILED, 1)
    ] + [(LogStatus.QUEUED, 0)] * 3
    destination.refresh_from_db()
    assert (destination.is_active, destination.disabled_cause) == (False, DisabledCause.GONE)
    assert notices(destination) == [("disabled", "The destination answered 410 Gone.")]
    # Its lane sends nothing more, and leaves the waiting logs as they are.
    assert start(destination).sent == 0
    assert len(sink.received()) == 1

    query = """mutation($id: ID!) { destinationEnable(id: $id) {
        ... on Destination { isActive disabledCause disabledReason health { state } }
        ... on OperationInfo { messages { code } } } }"""
    refused = gql(query, {"id": str(destination.pk)}, persona=normal_user)
    assert payload_codes(refused["data"]["destinationEnable"]) == ["permission_denied"]
    destination.refresh_from_db()
    assert not destination.is_active
    assert len(notices(destination)) == 1

    enabled = gql(query, {"id": str(destination.pk)}, persona=admin)

    assert enabled == {
        "data": {
            "destinationEnable": {
                "isActive": True,
                "disabledCause": None,
                "disabledReason": None,
                "health": {"state": "DEGRADED"},  # its latest try failed
            }
        }
    }
    sink.wait_for(lambda: len(sink.received()) == 4)
    assert DeliveryLog.objects.filter(status=LogStatus.SUCCESS).count() == 3
    assert [kind for kind, _ in notices(destination)] == ["disabled", "enabled"]
    assert notices(destination)[1][1] == (
        "Re-enabled by admin@example.com (was: The destination answered 410 Gone.)"
    )


def test_a_person_disabling_it_fails_its_waiting_logs(
    account: Account, sink: Sink, gql: GraphQL, normal_user: Persona
) -> None:
    destination = sink_destination(account, sink)
    log = due_log(destination)
    answer = gql(
        """mutation($id: ID!) { destinationUpdate(id: $id, input: {isActive: false}) {
            ... on Destination { isActive disabledCause disabledReason } } }""",
        {"id": str(destination.pk)},
        persona=normal_user,
    )
    assert answer["data"]["destinationUpdate"] == {
        "isActive": False,
        "disabledCause": "USER",
        "disabledReason": "Disabled by normal@example.com.",
    }
    start(destination)
    log.refresh_from_db()
    assert (log.status, log.last_error) == (LogStatus.FAILED, "Destination is inactive.")
    assert sink.received() == []


# --- Deferral through the engine --------------------------------------------------------------


def test_open_breaker_defers_without_spending_tries_and_resumes_in_order(
    account: Account, sink: Sink, settings: Any
) -> None:
    settings.DELIVERY_BATCH_SIZE = 5
    settings.DELIVERY_RETRY_SCHEDULE = [5]  # later than the probe: resumed when it closes
    settings.DESTINATION_BREAKER_COOLDOWN_SECONDS = 1
    destination = sink_destination(account, sink, "/status/" + ",".join(["500"] * 11 + ["200"]))
    logs = [due_log(destination) for _ in range(30)]

    run = start(destination)

    # A lone first send, then batches of 5: the 10th failed try opens it (batch of tries
    # 7-11 flushed at once): 11 tries made, 19 logs untouched.
    assert run.sent == 11
    assert len(sink.received()) == 11
    (opened,) = Notice.objects.filter(destination=destination)
    probe_at = run.wake_at
    assert probe_at is not None
    stored = DeliveryLog.objects.in_bulk([log.pk for log in logs])
    assert {(s.status, s.attempt_count) for s in stored.values()} == {
        (LogStatus.RETRYING, 1),
        (LogStatus.QUEUED, 0),
    }
    waiting = {s.status: set() for s in stored.values()}
    for s in stored.values():
        waiting[s.status].add(s.next_attempt_at)
    assert waiting[LogStatus.QUEUED] == {probe_at}  # deferred to the probe
    assert all(due is not None and due > probe_at for due in waiting[LogStatus.RETRYING])
    assert sum(stored[log.pk].attempt_count for log in logs) == 11
    # Before the probe time a lane sends nothing.
    assert start(destination).sent == 0
    assert len(sink.received()) == 11

    time.sleep(max(0.0, (probe_at - timezone.now()).total_seconds()) + 0.01)
    run = start(destination)

    # The probe (the oldest due log) succeeded, the breaker closed, and every waiting log was
    # due at once: the retries too, so all came in order.
    assert run.sent == 30
    ids = {log.webhook_id: log.pk for log in logs}
    arrivals = [ids[r.headers["webhook-id"]] for r in sink.received()[11:]]
    assert arrivals[1:] == [log.pk for log in logs if log.pk != arrivals[0]]
    stored = DeliveryLog.objects.in_bulk([log.pk for log in logs])
    assert [(stored[log.pk].status, stored[log.pk].attempt_count) for log in logs] == [
        (LogStatus.SUCCESS, 2)
    ] * 11 + [(LogStatus.SUCCESS, 1)] * 19
    assert [kind for kind, _ in notices(destination)] == ["breaker_opened", "breaker_closed"]
    assert opened.kind == "breaker_opened"


# --- Figures ---------------------------------------------------------------------------------


def test_figures_match_a_hand_count(destination: Destination) -> None:
    durations = [5, 20, 40, 80, 120, 300, 700]
    script = [Outcome(Kind.SUCCESS, ms, status_code=200) for ms in durations]
    script += [FAIL, Outcome(Kind.TRANSIENT, 30, status_code=503), TIMEOUT]
    at = T0
    for outcome in script:
        health.observe(destination, [outcome], now=at)
    waiting = [due_log(destination, next_attempt_at=T0 + timedelta(minutes=n)) for n in (3, 1, 2)]
    assert engine.take_slot(destination.pk, 0)

    (figures,) = health.figures([destination], now=at + timedelta(minutes=2))

    assert figures == health.Health(
        state=health.State.DEGRADED,  # 3 of 10 failed; the latest three too
        success_rate_1h=0.7,
        success_rate_24h=0.7,
        attempts_1h=10,
        failures_1h=3,
        # Answered tries (9): 5 | 20 | 40 30 30 | 80 | 120 | 300 | 700 ms in bins of edges
        # 10, 25, 50, 100, 250, 500, 1000: p50 is the 4.5th, in (25, 50]: 25 + 25 * 2.5 / 3;
        # p95 the 8.55th, in (500, 1000]: 500 + 500 * 0.55.
        latency_p50_ms=46,
        latency_p95_ms=775,
        last_success_at=T0,
        last_failure_at=T0,
        last_error="ReadTimeout: timed out",
        consecutive_failures=3,
        in_flight=1,
        backlog=3,
        next_attempt_at=waiting[1].next_attempt_at,
        opened_at=None,
    )
    # An hour on, the minute buckets are out of the last hour; the 24 h figures stay.
    (later,) = health.figures([destination], now=at + timedelta(hours=1))
    assert (later.attempts_1h, later.success_rate_1h, later.success_rate_24h) == (0, None, 0.7)


HEALTH = """query($filters: DestinationFilter) { destinations(filters: $filters) {
    id health { state attempts1h backlog nextAttemptAt openedAt } } }"""


def test_health_query_cost_is_constant_and_the_filter_narrows(
    account: Account, sink: Sink, gql: GraphQL, admin: Persona
) -> None:
    first = sink_destination(account, sink, "/a")
    gql(HEALTH, persona=admin)  # the token's first use writes its last-used time

    with CaptureQueriesContext(connection) as one:
        gql(HEALTH, persona=admin)
    destinations = [first] + [sink_destination(account, sink, f"/{n}") for n in range(4)]
    for destination in destinations:
        due_log(destination)
    observe(destinations[2], [FAIL] * 10, timezone.now())
    with CaptureQueriesContext(connection) as five:
        answer = gql(HEALTH, persona=admin)

    assert len(five.captured_queries) == len(one.captured_queries)
    states = {d["id"]: d["health"]["state"] for d in answer["data"]["destinations"]}
    assert states == {
        str(d.pk): "OPEN" if d is destinations[2] else "HEALTHY" for d in destinations
    }
    opened = gql(HEALTH, {"filters": {"health": ["OPEN", "HALF_OPEN"]}}, persona=admin)
    (only,) = opened["data"]["destinations"]
    assert only["id"] == str(destinations[2].pk)
    assert only["health"]["backlog"] == 1
    assert only["health"]["openedAt"] is not None
    assert only["health"]["nextAttemptAt"] > only["health"]["openedAt"]
    totals = gql(
        """{ accounts { health { destinations healthy open backlog attempts1h } } }""",
        persona=admin,
    )
    assert totals["data"]["accounts"] == [
        {"health": {"destinations": 5, "healthy": 4, "open": 1, "backlog": 5, "attempts1h": 10}}
    ]


def test_notices_query(account: Account, gql: GraphQL, admin: Persona, sink: Sink) -> None:
    destination = sink_destination(account, sink)
    observe(destination, [FAIL] * 10, T0)
    health.observe(destination, [OK], now=T0 + timedelta(seconds=30), probe=True)
    answer = gql(
        """query($a: ID!) { notices(accountId: $a, first: 5) { kind destination { id } } }""",
        {"a": str(account.pk)},
        persona=admin,
    )
    assert answer == {
        "data": {
            "notices": [
                {"kind": "BREAKER_CLOSED", "destination": {"id": str(destination.pk)}},
                {"kind": "BREAKER_OPENED", "destination": {"id": str(destination.pk)}},
            ]
        }
    }
    too_many = gql(
        """query($a: ID!) { notices(accountId: $a, first: 101) { kind } }""",
        {"a": str(account.pk)},
        persona=admin,
    )
    assert error_codes(too_many) == ["invalid_filter"]


def test_health_off_keeps_no_record(destination: Destination, settings: Any) -> None:
    settings.DESTINATION_HEALTH = False
    assert (
        observe(destination, [FAIL] * 20 + [Outcome(Kind.PERMANENT, 5, status_code=410)], T0)
        == [GO] * 21
    )
    assert health.admit(destination.pk, now=T0) == health.GO
    (figures,) = health.figures([destination], now=T0)
    assert (figures.state, figures.attempts_1h) == (health.State.HEALTHY, 0)
    destination.refresh_from_db()
    assert destination.is_active
    assert notices(destination) == []


def test_without_redis_the_lane_goes_on(
    destination: Destination, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The results are recorded before they are counted: a Redis outage must not stop a lane
    # with claimed logs (they would stay `sending` until their lease ends).
    class Down:
        def __getattr__(self, name: str) -> Any:
            def fail(*args: Any, **kwargs: Any) -> Any:
                raise RedisConnectionError("Connection refused")

            return fail

    monkeypatch.setattr(health, "_store", Down)
    assert observe(destination, [FAIL] * 10, T0) == [GO] * 10
    assert health.admit(destination.pk, now=T0) == health.GO
    assert notices(destination) == []

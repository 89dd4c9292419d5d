"""Lanes (delivery/engine.py) against the real sink (tests/sink.py): what one lane run claims,
sends and records, in which order, which lane slots it holds in the cache, and what the task
layer (delivery/tasks.py) enqueues after it. Huey is immediate here: an enqueued lane runs at
once, a scheduled task (an eta in the future) is only recorded by the `enqueued` fixture.

A lane run is called directly with its slot taken first, the way `engine.lanes_to_start` (or
the run before it) leaves it for the lane task. A destination's pace is shared in the cache
(`pace:<id>`): unknown until its first send (which goes out alone), then fast (batches) or slow
(one log at a time)."""

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.test import override_settings
from django.utils import timezone
from huey.contrib.djhuey import HUEY
from huey.signals import SIGNAL_ERROR

from delivery import destinations, engine, outbox, tasks, transport
from delivery.models import DeliveryAttempt, DeliveryLog, Destination, LogStatus
from identity.models import Account, User
from tests.delivery.conftest import due_log, sink_destination, start, task_calls
from tests.sink import Sink

# A time slice no batch fits in: every run returns after its first batch.
TINY_SLICE = 0.000001


@pytest.fixture(autouse=True)
def _no_task_errors() -> Iterator[None]:
    """Fail the test if a task raised: Huey's immediate mode logs the exception and goes on."""
    errors: list[BaseException] = []

    def record(signal: str, task: Any, exc: BaseException, *args: Any, **kwargs: Any) -> None:
        errors.append(exc)

    HUEY.signal(SIGNAL_ERROR)(record)
    yield
    HUEY.disconnect_signal(record, SIGNAL_ERROR)
    assert errors == []


@pytest.fixture(autouse=True)
def _unhurried(settings: Any) -> None:
    """A slice no test outruns and no send counted slow on a busy machine, unless a test sets
    them itself (`override_settings` on the test applies over this)."""
    settings.DELIVERY_LANE_SLICE_SECONDS = 60
    settings.DELIVERY_SLOW_SECONDS = 30


Claims = list[tuple[int, int]]


@pytest.fixture
def claims(monkeypatch: pytest.MonkeyPatch) -> Claims:
    """(limit, logs claimed) of each `outbox.claim` a lane makes, in order (0: nothing due)."""
    made: Claims = []
    real_claim = outbox.claim

    def claim(**kwargs: Any) -> outbox.Claim | None:
        batch = real_claim(**kwargs)
        made.append((kwargs.get("limit", 1), 0 if batch is None else len(batch.logs)))
        return batch

    monkeypatch.setattr(outbox, "claim", claim)
    return made


def pace(destination: Destination) -> str | None:
    value: str | None = cache.get(f"pace:{destination.pk}")
    return value


def set_pace(destination: Destination, value: str) -> None:
    """As a lane leaves it after a send (engine.FAST or engine.SLOW)."""
    cache.set(f"pace:{destination.pk}", value)


def slot_held(destination: Destination, slot: int = 0) -> bool:
    return cache.get(f"lane:{destination.pk}:{slot}") is not None


def sent(sink: Sink) -> list[str]:
    """The webhook-id of every request the sink received, in arrival order."""
    return [request.headers["webhook-id"] for request in sink.received()]


def webhook_ids(logs: list[DeliveryLog]) -> list[str]:
    return [log.webhook_id for log in logs]


def state(log: DeliveryLog) -> tuple[Any, ...]:
    """What a log is as stored: status, attempt_count, next_attempt_at, last_error."""
    log.refresh_from_db()
    return (log.status, log.attempt_count, log.next_attempt_at, log.last_error)


def attempts(log: DeliveryLog) -> list[tuple[int, int | None, str]]:
    return list(
        DeliveryAttempt.objects.filter(log=log)
        .order_by("number")
        .values_list("number", "status_code", "error_class")
    )


def rows(logs: list[DeliveryLog]) -> list[tuple[Any, ...]]:
    """Every column of the logs, to prove that a run left them alone."""
    ids = [log.pk for log in logs]
    return list(DeliveryLog.objects.filter(pk__in=ids).order_by("pk").values_list())


def huey_eta(at: datetime) -> datetime:
    """`at` as Huey stores the eta of a scheduled task (naive UTC, HUEY.utc)."""
    return at.astimezone(UTC).replace(tzinfo=None)


# --- 1. One destination, oldest due first ------------------------------------------------------


def test_lane_run_sends_the_due_logs_of_its_destination_only_oldest_due_first(
    account: Account, sink: Sink, enqueued: list[Any]
) -> None:
    destination = sink_destination(account, sink, "/mine")
    other = sink_destination(account, sink, "/other")
    now = timezone.now()
    tie = now - timedelta(seconds=20)
    # Created out of due order; two share a due time (then the lower id goes first).
    third = due_log(destination, next_attempt_at=now - timedelta(seconds=10))
    first = due_log(
        destination,
        status=LogStatus.RETRYING,
        attempt_count=1,
        next_attempt_at=now - timedelta(seconds=30),
    )
    second_a = due_log(destination, next_attempt_at=tie)
    second_b = due_log(destination, next_attempt_at=tie)
    not_due = due_log(destination, next_attempt_at=now + timedelta(minutes=5))
    others = [
        due_log(other, next_attempt_at=now - timedelta(minutes=1)),
        due_log(other, status=LogStatus.RETRYING, next_attempt_at=now - timedelta(minutes=1)),
    ]
    untouched = rows([not_due, *others])

    run = start(destination)

    order = [first, second_a, second_b, third]
    assert run == engine.LaneRun(sent=4, wake_at=not_due.next_attempt_at)
    assert sent(sink) == webhook_ids(order)
    assert {request.path for request in sink.received()} == {"/mine"}
    assert [state(log)[:3] for log in order] == [
        (LogStatus.SUCCESS, 2, None),
        (LogStatus.SUCCESS, 1, None),
        (LogStatus.SUCCESS, 1, None),
        (LogStatus.SUCCESS, 1, None),
    ]
    assert [attempts(log) for log in order] == [
        [(2, 200, "")],
        [(1, 200, "")],
        [(1, 200, "")],
        [(1, 200, "")],
    ]
    assert rows([not_due, *others]) == untouched
    # The run released its slot, and enqueued nothing itself.
    assert not slot_held(destination)
    assert engine.take_slot(destination.pk, 0)
    assert enqueued == []


# --- 2. One lane per slot ------------------------------------------------------------------------


def test_a_held_slot_starts_no_second_lane_until_it_is_freed(
    account: Account, sink: Sink, enqueued: list[Any]
) -> None:
    destination = sink_destination(account, sink)
    log = due_log(destination)
    assert engine.take_slot(destination.pk, 0)

    assert engine.lanes_to_start([destination.pk]) == []
    tasks.wake_destinations([destination.pk])
    assert task_calls(enqueued) == []
    assert sink.received() == []
    assert state(log)[0] == LogStatus.QUEUED

    engine.free_slot(destination.pk, 0)
    # A destination named twice gets one lane; its slot is now taken for that lane.
    assert engine.lanes_to_start([destination.pk, destination.pk]) == [destination.pk]
    assert slot_held(destination)
    assert engine.lanes_to_start([destination.pk]) == []

    engine.free_slot(destination.pk, 0)
    tasks.wake_destinations([destination.pk])
    assert task_calls(enqueued) == [(destination.pk, 0)]
    assert sent(sink) == [log.webhook_id]
    assert state(log)[0] == LogStatus.SUCCESS
    assert not slot_held(destination)


def test_an_accounts_wake_starts_lanes_only_for_its_destinations_with_a_free_slot(
    account: Account, sink: Sink
) -> None:
    """One slot take per destination, in one round trip on Redis, in the order asked."""
    first, held, last = (sink_destination(account, sink) for _ in range(3))
    assert engine.take_slot(held.pk, 0)

    ids = [last.pk, held.pk, first.pk, last.pk]
    assert engine.lanes_to_start(ids) == [last.pk, first.pk]
    assert all(slot_held(d) for d in (first, held, last))
    assert engine.lanes_to_start(ids) == []


# --- 3. The release seam -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "moment",
    [
        # The slot is still held: the wake that follows the commit starts no lane.
        "after_the_empty_claim_with_a_wake",
        # The slot is free, but the account's wake flag was set already: no wake comes.
        "after_the_release",
    ],
)
def test_a_log_committed_at_the_release_seam_is_sent_by_the_same_lane(
    account: Account,
    sink: Sink,
    enqueued: list[Any],
    claims: Claims,
    monkeypatch: pytest.MonkeyPatch,
    moment: str,
) -> None:
    destination = sink_destination(account, sink)
    early = due_log(destination)
    late: list[DeliveryLog] = []
    counted_claim, real_next_due = outbox.claim, outbox.next_due

    def claim(**kwargs: Any) -> outbox.Claim | None:
        batch = counted_claim(**kwargs)
        if batch is None and not late and moment == "after_the_empty_claim_with_a_wake":
            assert slot_held(destination)
            late.append(due_log(destination))
            tasks.wake_destinations([destination.pk])
        return batch

    def next_due(destination_id: int) -> datetime | None:
        if not late and moment == "after_the_release":
            assert not slot_held(destination)
            late.append(due_log(destination))
        return real_next_due(destination_id)

    monkeypatch.setattr(outbox, "claim", claim)
    monkeypatch.setattr(outbox, "next_due", next_due)

    run = start(destination)

    assert run == engine.LaneRun(sent=2)
    # The first send of a destination goes out alone; it answered fast: batches from then on.
    assert claims == [(1, 1), (50, 0), (50, 1)]
    assert sent(sink) == webhook_ids([early, *late])
    assert [state(log)[0] for log in (early, *late)] == [LogStatus.SUCCESS] * 2
    assert task_calls(enqueued) == []
    assert not slot_held(destination)


def test_a_log_committed_after_the_release_with_a_wake_is_sent_once_by_the_new_lane(
    account: Account,
    sink: Sink,
    enqueued: list[Any],
    claims: Claims,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    destination = sink_destination(account, sink)
    early = due_log(destination)
    late: list[DeliveryLog] = []
    real_next_due = outbox.next_due

    def next_due(destination_id: int) -> datetime | None:
        if not late:
            late.append(due_log(destination))
            # The slot is free: the wake starts a lane (it runs at once, immediate mode).
            tasks.wake_destinations([destination.pk])
        return real_next_due(destination_id)

    monkeypatch.setattr(outbox, "next_due", next_due)

    run = start(destination)

    assert run == engine.LaneRun(sent=1)
    assert task_calls(enqueued) == [(destination.pk, 0)]
    # The first lane's two claims, then the second lane's two.
    assert claims == [(1, 1), (50, 0), (50, 1)]
    assert sent(sink) == webhook_ids([early, *late])
    assert [state(log)[0] for log in (early, *late)] == [LogStatus.SUCCESS] * 2
    assert not slot_held(destination)


# --- 4. Batches ----------------------------------------------------------------------------------


@override_settings(DELIVERY_BATCH_SIZE=10)
@pytest.mark.parametrize(
    ("known", "expected"),
    [
        pytest.param(engine.FAST, [(10, 10), (10, 10), (10, 5)], id="known-fast"),
        # Its first send alone, then batches.
        pytest.param(None, [(1, 1), (10, 10), (10, 10), (10, 4)], id="new"),
    ],
)
def test_a_lane_claims_its_backlog_in_batches_of_the_batch_size(
    account: Account, sink: Sink, claims: Claims, known: str | None, expected: Claims
) -> None:
    destination = sink_destination(account, sink)
    if known is not None:
        set_pace(destination, known)
    logs = [due_log(destination) for _ in range(25)]

    run = start(destination)

    assert run == engine.LaneRun(sent=25)
    assert claims == expected
    assert pace(destination) == engine.FAST
    assert sent(sink) == webhook_ids(logs)
    assert {state(log)[:3] for log in logs} == {(LogStatus.SUCCESS, 1, None)}
    per_log = Counter(DeliveryAttempt.objects.values_list("log_id", flat=True))
    assert per_log == dict.fromkeys([log.pk for log in logs], 1)
    assert not slot_held(destination)


# --- 5. Time slice -------------------------------------------------------------------------------


@override_settings(DELIVERY_BATCH_SIZE=1, DELIVERY_LANE_SLICE_SECONDS=TINY_SLICE)
def test_a_lane_whose_slice_ends_keeps_its_slot_and_runs_again(
    account: Account, sink: Sink, enqueued: list[Any], claims: Claims
) -> None:
    destination = sink_destination(account, sink)
    logs = [due_log(destination) for _ in range(3)]

    run = start(destination)

    assert run == engine.LaneRun(sent=1, again=True)
    assert claims == [(1, 1)]
    assert slot_held(destination)
    assert engine.lanes_to_start([destination.pk]) == []
    assert [state(log)[0] for log in logs] == [
        LogStatus.SUCCESS,
        LogStatus.QUEUED,
        LogStatus.QUEUED,
    ]
    assert sent(sink) == webhook_ids(logs[:1])

    # The task of the run that follows: each run sends one and enqueues the next; the last
    # one finds nothing due and releases the slot.
    tasks.lane(destination.pk, 0)

    assert task_calls(enqueued) == [(destination.pk, 0)] * 3
    assert claims == [(1, 1)] * 3 + [(1, 0)]
    assert sent(sink) == webhook_ids(logs)
    assert {state(log)[:2] for log in logs} == {(LogStatus.SUCCESS, 1)}
    assert not slot_held(destination)


# --- 6. A slow destination -----------------------------------------------------------------------


@override_settings(
    DELIVERY_BATCH_SIZE=5, DELIVERY_SLOW_SECONDS=0.2, DELIVERY_LANE_SLICE_SECONDS=TINY_SLICE
)
def test_a_slow_send_gives_back_the_rest_of_the_batch_and_slows_the_lane_down(
    account: Account, sink: Sink, claims: Claims
) -> None:
    destination = sink_destination(account, sink, "/slow/0.3")
    set_pace(destination, engine.FAST)  # it answered fast so far
    now = timezone.now()
    logs = [due_log(destination, next_attempt_at=now - timedelta(minutes=5 - n)) for n in range(5)]
    due_before = [log.next_attempt_at for log in logs]
    assert engine.slow_lanes.running == 0

    run = start(destination)

    # One send, recorded; the four unsent are back as they were (no try spent).
    assert run == engine.LaneRun(sent=1, again=True)
    assert claims == [(5, 5)]
    assert sent(sink) == webhook_ids(logs[:1])
    assert state(logs[0])[:3] == (LogStatus.SUCCESS, 1, None)
    assert attempts(logs[0]) == [(1, 200, "")]
    assert DeliveryAttempt.objects.get(log=logs[0]).duration_ms >= 300
    assert [state(log) for log in logs[1:]] == [
        (LogStatus.QUEUED, 0, due, "") for due in due_before[1:]
    ]
    assert DeliveryAttempt.objects.filter(log__in=logs[1:]).count() == 0
    assert pace(destination) == engine.SLOW
    assert slot_held(destination)

    # Later runs of the slow lane claim one log at a time.
    runs = [engine.lane_run(destination.pk)]
    while runs[-1].again and len(runs) < 10:
        runs.append(engine.lane_run(destination.pk))

    assert runs == [engine.LaneRun(sent=1, again=True)] * 4 + [engine.LaneRun()]
    assert claims == [(5, 5)] + [(1, 1)] * 4 + [(1, 0)]
    assert sent(sink) == webhook_ids(logs)
    assert {state(log)[:2] for log in logs} == {(LogStatus.SUCCESS, 1)}
    assert pace(destination) == engine.SLOW
    assert engine.slow_lanes.running == 0
    assert not slot_held(destination)


@override_settings(
    DELIVERY_BATCH_SIZE=5, DELIVERY_SLOW_SECONDS=0.2, DELIVERY_LANE_SLICE_SECONDS=TINY_SLICE
)
def test_a_new_destinations_first_send_goes_out_alone(
    account: Account, sink: Sink, claims: Claims
) -> None:
    # A destination that hangs never holds a whole batch `sending` behind its first request.
    destination = sink_destination(account, sink, "/slow/0.3")
    logs = [due_log(destination) for _ in range(5)]
    untouched = rows(logs[1:])

    run = start(destination)

    assert run == engine.LaneRun(sent=1, again=True)
    assert claims == [(1, 1)]
    assert sent(sink) == webhook_ids(logs[:1])
    assert state(logs[0])[:3] == (LogStatus.SUCCESS, 1, None)
    assert rows(logs[1:]) == untouched  # never claimed
    assert pace(destination) == engine.SLOW
    assert engine.slow_lanes.running == 0
    assert slot_held(destination)


# --- 7. The slow-lane cap ------------------------------------------------------------------------


@override_settings(DELIVERY_SLOW_LANES=1)
def test_a_slow_destination_without_slow_lane_room_is_deferred_keeping_its_slot(
    account: Account, sink: Sink, enqueued: list[Any], claims: Claims
) -> None:
    destination = sink_destination(account, sink)
    log = due_log(destination)
    before = state(log)
    set_pace(destination, engine.SLOW)
    assert engine.slow_lanes.running == 0
    assert engine.slow_lanes.enter()  # the one slow lane of this process is busy
    try:
        run = start(destination)

        assert run == engine.LaneRun(deferred=True)
        assert claims == []
        assert sink.received() == []
        assert state(log) == before
        assert slot_held(destination)
        assert engine.slow_lanes.running == 1

        # The lane task schedules itself DEFER_SECONDS later (not run in immediate mode).
        earliest = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=tasks.DEFER_SECONDS)
        tasks.lane(destination.pk, 0)
        latest = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=tasks.DEFER_SECONDS)

        lanes = [task for task in enqueued if task.name == "lane"]
        assert [(task.args, task.eta is None) for task in lanes] == [
            ((destination.pk, 0), True),
            ((destination.pk, 0), False),
        ]
        assert earliest <= lanes[1].eta <= latest
        assert len(enqueued) == 2
        assert claims == []
        assert sink.received() == []
        assert slot_held(destination)
        assert engine.slow_lanes.running == 1
    finally:
        engine.slow_lanes.leave()

    # With room again the deferred lane sends, one log at a time; a fast answer makes the
    # destination fast again (batches).
    run = engine.lane_run(destination.pk)

    assert run == engine.LaneRun(sent=1)
    assert claims == [(1, 1), (50, 0)]
    assert sent(sink) == [log.webhook_id]
    assert state(log)[:2] == (LogStatus.SUCCESS, 1)
    assert pace(destination) == engine.FAST
    assert engine.slow_lanes.running == 0
    assert not slot_held(destination)


# --- 7b. The quick-lane cap -------------------------------------------------------------------


@pytest.fixture
def quick_room(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """What each wait for quick-lane room ended in (True: room taken), in order; this
    process's quick-lane state starts empty and is left as found."""
    engine.quick_lanes.known.clear()
    waits: list[bool] = []
    room = engine.quick_lanes._room
    real_wait = room.wait_for

    def wait_for(predicate: Any, timeout: float | None = None) -> bool:
        waits.append(bool(real_wait(predicate, timeout)))
        return waits[-1]

    monkeypatch.setattr(room, "wait_for", wait_for)
    yield waits
    assert engine.quick_lanes.running == 0
    engine.quick_lanes.known.clear()


@pytest.mark.parametrize(
    ("path", "quick"), [pytest.param("/", True, id="quick"), pytest.param("/slow/0.05", False)]
)
def test_a_lane_learns_whether_its_destination_answers_quickly(
    account: Account, sink: Sink, quick_room: list[bool], path: str, quick: bool
) -> None:
    destination = sink_destination(account, sink, path)
    logs = [due_log(destination) for _ in range(3)]

    assert start(destination) == engine.LaneRun(sent=3)

    assert engine.quick_lanes.known == {destination.pk: quick}
    assert sent(sink) == webhook_ids(logs)
    # Its first send went out alone (pace unknown), the rest as one batch: waited for room
    # only when known quick by then.
    assert quick_room == ([True] if quick else [])


@override_settings(DELIVERY_QUICK_LANES=1, DELIVERY_BATCH_SIZE=2)
def test_a_quick_lane_waits_for_room_between_batches_and_goes_on_when_none_comes(
    account: Account,
    sink: Sink,
    claims: Claims,
    quick_room: list[bool],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine, "QUICK_WAIT_SECONDS", 0.01)
    destination = sink_destination(account, sink)
    set_pace(destination, engine.FAST)
    engine.quick_lanes.learn(destination.pk, True)
    logs = [due_log(destination) for _ in range(5)]
    assert engine.quick_lanes.enter(destination.pk)  # another quick lane holds the room
    try:
        assert start(destination) == engine.LaneRun(sent=5)
        # The holder's wait, then one per claim (the last one short: nothing more to claim),
        # each timed out; the lane went on without room, so the count stayed the holder's.
        assert quick_room == [True, False, False, False]
        assert engine.quick_lanes.running == 1
    finally:
        engine.quick_lanes.leave()
    assert claims == [(2, 2), (2, 2), (2, 1)]
    assert sent(sink) == webhook_ids(logs)

    # With room free, each batch takes it and gives it back.
    more = [due_log(destination) for _ in range(3)]
    quick_room.clear()
    assert engine.lane_run(destination.pk) == engine.LaneRun(sent=3)
    assert quick_room == [True, True]
    assert sent(sink)[5:] == webhook_ids(more)


@pytest.mark.parametrize(
    ("limit", "known"),
    [
        pytest.param(1, False, id="not-quick"),
        pytest.param(1, None, id="unknown-here"),
        pytest.param(0, True, id="no-limit"),
    ],
)
def test_only_quick_lanes_wait_for_room(
    account: Account,
    sink: Sink,
    quick_room: list[bool],
    settings: Any,
    limit: int,
    known: bool | None,
) -> None:
    destination = sink_destination(account, sink, "/slow/0.05" if known is False else "/")
    set_pace(destination, engine.FAST)
    if known is not None:
        engine.quick_lanes.learn(destination.pk, known)
    settings.DELIVERY_QUICK_LANES = 1
    other = sink_destination(account, sink)
    engine.quick_lanes.learn(other.pk, True)
    assert engine.quick_lanes.enter(other.pk)  # the one room is taken
    settings.DELIVERY_QUICK_LANES = limit
    try:
        logs = [due_log(destination) for _ in range(3)]
        assert start(destination) == engine.LaneRun(sent=3)
    finally:
        engine.quick_lanes.leave()

    assert quick_room == [True]  # the holder's own wait
    assert sent(sink) == webhook_ids(logs)


# --- 8. More than one lane per destination -------------------------------------------------------


@override_settings(DELIVERY_BATCH_SIZE=5)
@pytest.mark.parametrize(
    ("max_in_flight", "default", "backlog", "spawn"),
    [
        pytest.param(3, 1, 20, [1, 2], id="field-3"),
        pytest.param(1, 1, 20, [], id="field-1"),
        pytest.param(None, 2, 20, [1], id="setting-2"),
        pytest.param(1, 4, 20, [], id="field-1-over-setting-4"),
        # Its first send alone, then 3 of a batch of 5: never a full batch.
        pytest.param(3, 1, 4, [], id="no-full-batch"),
    ],
)
def test_a_full_batch_takes_the_other_lane_slots(
    account: Account,
    sink: Sink,
    max_in_flight: int | None,
    default: int,
    backlog: int,
    spawn: list[int],
) -> None:
    destination = sink_destination(account, sink)
    destination.max_in_flight = max_in_flight
    destination.save()
    logs = [due_log(destination) for _ in range(backlog)]

    with override_settings(DELIVERY_MAX_IN_FLIGHT=default):
        run = start(destination)

    assert run == engine.LaneRun(sent=backlog, spawn=spawn)
    # The spawned slots are held for the lanes the task layer runs on them; slot 0 is free.
    assert [slot for slot in range(5) if slot_held(destination, slot)] == spawn
    assert sent(sink) == webhook_ids(logs)


@override_settings(DELIVERY_BATCH_SIZE=5)
def test_the_lane_task_runs_a_lane_on_each_spawned_slot(
    account: Account, sink: Sink, enqueued: list[Any]
) -> None:
    destination = sink_destination(account, sink)
    destination.max_in_flight = 3
    destination.save()
    logs = [due_log(destination) for _ in range(20)]
    assert engine.take_slot(destination.pk, 0)

    tasks.lane(destination.pk, 0)

    assert task_calls(enqueued) == [(destination.pk, 0), (destination.pk, 1), (destination.pk, 2)]
    assert sink.webhook_ids() == dict.fromkeys(webhook_ids(logs), 1)
    assert {state(log)[:2] for log in logs} == {(LogStatus.SUCCESS, 1)}
    assert [slot for slot in range(5) if slot_held(destination, slot)] == []


# --- 9. Inactive and deleted destinations --------------------------------------------------------


@override_settings(DELIVERY_BATCH_SIZE=2)
def test_an_inactive_destinations_due_logs_fail_without_a_request(
    account: Account, sink: Sink
) -> None:
    destination = sink_destination(account, sink, is_active=False)
    logs = [due_log(destination) for _ in range(3)]
    later = due_log(destination, next_attempt_at=timezone.now() + timedelta(minutes=5))
    untouched = rows([later])

    run = start(destination)

    assert run == engine.LaneRun(wake_at=later.next_attempt_at)
    assert [state(log) for log in logs] == [
        (LogStatus.FAILED, 0, None, "Destination is inactive.")
    ] * 3
    assert all(log.processed_timestamp is not None for log in logs)
    assert DeliveryAttempt.objects.count() == 0
    assert sink.received() == []
    assert rows([later]) == untouched
    assert not slot_held(destination)


def test_deleting_a_destination_fails_its_waiting_logs_and_leaves_the_one_being_sent(
    account: Account, sink: Sink, admin_user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = sink_destination(account, sink)
    now = timezone.now()
    being_sent = due_log(destination)
    queued = due_log(destination, next_attempt_at=now + timedelta(minutes=1))
    retrying = due_log(
        destination,
        status=LogStatus.RETRYING,
        attempt_count=1,
        next_attempt_at=now + timedelta(minutes=5),
    )
    during: dict[int, tuple[Any, ...]] = {}
    real_send = transport.send

    def send(**kwargs: Any) -> transport.Outcome:
        # The ADMIN deletes the destination while its lane sends `being_sent`.
        destinations.destination_delete(actor=admin_user, destination_id=destination.pk)
        during.update({log.pk: state(log) for log in (being_sent, queued, retrying)})
        return real_send(**kwargs)

    monkeypatch.setattr(transport, "send", send)

    run = start(destination)

    assert during[being_sent.pk][0] == LogStatus.SENDING
    assert during[queued.pk] == (LogStatus.FAILED, 0, None, "Destination deleted.")
    assert during[retrying.pk] == (LogStatus.FAILED, 1, None, "Destination deleted.")
    # The lane recorded the try it made.
    assert run == engine.LaneRun(sent=1)
    assert state(being_sent)[:3] == (LogStatus.SUCCESS, 1, None)
    assert being_sent.destination_id is None
    assert attempts(being_sent) == [(1, 200, "")]
    assert [state(log) for log in (queued, retrying)] == [
        (LogStatus.FAILED, 0, None, "Destination deleted."),
        (LogStatus.FAILED, 1, None, "Destination deleted."),
    ]
    assert attempts(queued) == attempts(retrying) == []
    assert sent(sink) == [being_sent.webhook_id]
    assert not slot_held(destination)
    assert not Destination.objects.filter(pk=destination.pk).exists()

    # A lane woken for the deleted destination afterwards does nothing and frees its slot.
    assert start(destination) == engine.LaneRun()
    assert len(sink.received()) == 1
    assert not slot_held(destination)


def test_a_destination_changed_since_the_lanes_copy_is_sent_as_it_is_now(
    account: Account, sink: Sink, admin_user: User
) -> None:
    destination = sink_destination(account, sink, "/before")
    due_log(destination)
    start(destination)  # this process now holds a copy of the destination
    assert engine.destination_copies.get(destination.pk) is not None

    destinations.destination_update(
        actor=admin_user,
        destination_id=destination.pk,
        url=f"{sink.url}/after",
        headers={"X-Changed": "yes"},
    )
    log = due_log(destination)
    start(destination)

    assert [r.path for r in sink.received()] == ["/before", "/after"]
    assert sink.received()[-1].headers["x-changed"] == "yes"
    assert state(log)[:2] == (LogStatus.SUCCESS, 1)
    assert engine.destination_copies.get(destination.pk).url == f"{sink.url}/after"


def test_a_destination_changed_then_deleted_while_its_lane_claims_fails_the_claim_unsent(
    account: Account, sink: Sink, admin_user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lane finds its copy stale and loads the destination again after the claim: gone.
    # (Deleted without a change first, its claimed logs are sent: they were being sent.)
    destination = sink_destination(account, sink)
    due_log(destination)
    start(destination)
    logs = [due_log(destination) for _ in range(2)]
    destinations.destination_update(
        actor=admin_user, destination_id=destination.pk, url=f"{sink.url}/changed"
    )
    real_claim = outbox.claim

    def claim(**kwargs: Any) -> outbox.Claim | None:
        batch = real_claim(**kwargs)
        destinations.destination_delete(actor=admin_user, destination_id=destination.pk)
        return batch

    monkeypatch.setattr(outbox, "claim", claim)

    assert start(destination) == engine.LaneRun()
    assert [state(log) for log in logs] == [(LogStatus.FAILED, 0, None, "Destination deleted.")] * 2
    assert attempts(logs[0]) == attempts(logs[1]) == []
    assert len(sink.received()) == 1
    assert not slot_held(destination)
    assert engine.destination_copies.get(destination.pk) is None


# --- 10. Retries ---------------------------------------------------------------------------------


def test_a_retry_is_a_due_time_and_one_scheduled_wake(
    account: Account, sink: Sink, enqueued: list[Any]
) -> None:
    destination = sink_destination(account, sink, "/status/500")
    log = due_log(destination)

    before = timezone.now()
    run = start(destination)

    status, attempt_count, due, error = state(log)
    assert (status, attempt_count, error) == (
        LogStatus.RETRYING,
        1,
        "HTTP 500 Internal Server Error",
    )
    assert due is not None
    assert before + timedelta(seconds=5) <= due <= timezone.now() + timedelta(seconds=5.5)
    assert run == engine.LaneRun(sent=1, wake_at=due)
    assert attempts(log) == [(1, 500, "HTTPStatus")]
    assert enqueued == []  # the engine enqueues nothing itself
    assert not slot_held(destination)

    # The lane task schedules a wake at that time, once.
    tasks.lane(destination.pk, 0)
    tasks.lane(destination.pk, 0)

    assert task_calls(enqueued) == [(destination.pk, 0)] * 2
    wakes = [task for task in enqueued if task.name == "wake_destination"]
    assert [(task.args, task.eta) for task in wakes] == [((destination.pk,), huey_eta(due))]
    assert len(enqueued) == 3
    assert len(sink.received()) == 1
    assert state(log)[:3] == (LogStatus.RETRYING, 1, due)
    assert not slot_held(destination)


def test_wake_later_schedules_only_a_wake_earlier_than_the_one_pending(
    account: Account, sink: Sink
) -> None:
    destination = sink_destination(account, sink)
    at = timezone.now() + timedelta(minutes=1)

    assert engine.wake_later(destination.pk, at) is True
    assert engine.wake_later(destination.pk, at) is False
    assert engine.wake_later(destination.pk, at + timedelta(seconds=30)) is False
    assert engine.wake_later(destination.pk, at - timedelta(seconds=30)) is True
    assert engine.wake_later(destination.pk, at) is False
    # Another destination's wakes are its own.
    other = sink_destination(account, sink, "/other")
    assert engine.wake_later(other.pk, at) is True


# --- 11. A lease lost mid-batch ------------------------------------------------------------------


def test_record_writes_only_the_logs_still_held_after_the_sweeper_took_one_back(
    account: Account, sink: Sink
) -> None:
    destination = sink_destination(account, sink)
    logs = [due_log(destination) for _ in range(3)]
    batch = outbox.claim(destination_id=destination.pk, limit=3)
    assert batch is not None
    assert [log.pk for log in batch.logs] == [log.pk for log in logs]

    # The sweeper, its clock past the lease, takes one claimed log back before the lane records.
    [lost] = outbox.take_back(now=batch.lease + timedelta(seconds=1), limit=1)
    ok = transport.Outcome(transport.Kind.SUCCESS, 12, status_code=200)
    written = outbox.record([outbox.result_of(log, ok) for log in batch.logs], lease=batch.lease)

    held = [log for log in logs if log.pk != lost.pk]
    assert [log.pk for log in written] == [log.pk for log in held]
    assert [state(log)[:3] for log in held] == [(LogStatus.SUCCESS, 1, None)] * 2
    assert [attempts(log) for log in held] == [[(1, 200, "")]] * 2
    # The taken-back log stays as the sweeper wrote it: one lost try, due again at once.
    status, attempt_count, due, error = state(lost)
    assert (status, attempt_count, error) == (LogStatus.RETRYING, 1, outbox.LOST_TRY_MESSAGE)
    assert due is not None
    assert due <= timezone.now()
    assert attempts(lost) == [(1, None, "OutcomeUnknown")]


# --- What a lane keeps to whatever it sends: batches, its slice, its lease, one lane a slot ----


@override_settings(DELIVERY_BATCH_SIZE=2)
def test_an_inactive_destinations_backlog_fails_in_batches_of_the_batch_size(
    account: Account, sink: Sink, claims: Claims
) -> None:
    # No request is made, so there is no first send to make alone: an inactive destination
    # has no pace, and its backlog should not fail one claim (and one commit) per log.
    destination = sink_destination(account, sink, is_active=False)
    logs = [due_log(destination) for _ in range(3)]

    assert start(destination) == engine.LaneRun()

    assert claims == [(2, 2), (2, 1)]
    assert {state(log)[0] for log in logs} == {LogStatus.FAILED}


@override_settings(DELIVERY_BATCH_SIZE=1, DELIVERY_LANE_SLICE_SECONDS=TINY_SLICE)
def test_an_inactive_destination_yields_at_the_end_of_its_time_slice(
    account: Account, sink: Sink, claims: Claims
) -> None:
    # Failing a backlog takes time too (a claim and a commit per batch): the lane runs for one
    # time slice like any other, so an inactive destination cannot hold a worker thread.
    destination = sink_destination(account, sink, is_active=False)
    logs = [due_log(destination) for _ in range(3)]

    run = start(destination)

    assert run == engine.LaneRun(again=True)
    assert claims == [(1, 1)]
    assert [state(log)[0] for log in logs] == [
        LogStatus.FAILED,
        LogStatus.QUEUED,
        LogStatus.QUEUED,
    ]
    assert slot_held(destination)


def _record_late_sends(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The webhook-id of every send that started once its log's lease had ended."""
    late: list[str] = []
    real_send = transport.send

    def send(**kwargs: Any) -> transport.Outcome:
        log = DeliveryLog.objects.get(webhook_id=kwargs["webhook_id"])
        assert log.status == LogStatus.SENDING
        assert log.next_attempt_at is not None
        if log.next_attempt_at <= timezone.now():
            late.append(log.webhook_id)
        return real_send(**kwargs)

    monkeypatch.setattr(transport, "send", send)
    return late


@override_settings(
    DELIVERY_BATCH_SIZE=4,
    DELIVERY_CONNECT_TIMEOUT=0.05,
    DELIVERY_READ_TIMEOUT=0.5,
    DELIVERY_SWEEP_GRACE_SECONDS=0.3,
)
def test_a_lane_never_sends_a_claimed_log_after_its_lease_ended(
    account: Account, sink: Sink, claims: Claims, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lease is 0.85 s (0.55 s send timeout + 0.3 s grace) and each send takes 0.3 s (not
    # slow): a batch of 4 outlives it. Once the lease has ended the sweeper may take the rest
    # back (recording tries that were never made, freeing the lane's slot) and another lane
    # send them too: the lane gives back what it could not send within the lease.
    destination = sink_destination(account, sink, "/slow/0.3")
    set_pace(destination, engine.FAST)
    logs = [due_log(destination) for _ in range(4)]
    late = _record_late_sends(monkeypatch)

    run = start(destination)

    assert late == []
    assert run == engine.LaneRun(sent=4)
    assert len(claims) > 2  # the batch of 4, what it gave back, ..., nothing
    assert sent(sink) == webhook_ids(logs)
    assert [attempts(log) for log in logs] == [[(1, 200, "")]] * 4
    assert not slot_held(destination)


@override_settings(
    DELIVERY_CONNECT_TIMEOUT=0.05,
    DELIVERY_READ_TIMEOUT=0.5,
    DELIVERY_SWEEP_GRACE_SECONDS=0,
    DELIVERY_LANE_SLICE_SECONDS=0.5,
)
def test_a_lane_delivers_when_the_lease_is_one_send_timeout(
    account: Account, sink: Sink, claims: Claims, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DELIVERY_SWEEP_GRACE_SECONDS=0 (the setting allows it): the lease is exactly one send
    # timeout, so a send started as soon as the log is claimed still ends within it. The
    # first log of each claim must go out, or the lane claims and gives back forever.
    destination = sink_destination(account, sink)
    set_pace(destination, engine.FAST)
    log = due_log(destination)
    late = _record_late_sends(monkeypatch)

    run = start(destination)

    assert run == engine.LaneRun(sent=1)
    assert claims == [(50, 1)]
    assert late == []
    assert sent(sink) == [log.webhook_id]
    assert state(log)[:3] == (LogStatus.SUCCESS, 1, None)
    assert not slot_held(destination)


def test_the_sweeper_starts_no_second_lane_beside_a_running_one(
    account: Account, sink: Sink, enqueued: list[Any]
) -> None:
    # A worker died holding a claim; its slot expired (it lasts one lease) and a new lane of
    # the destination is running on slot 0 when the sweeper takes the dead claim back. The
    # taken-back log is due at once: the running lane finds it. Freeing slot 0 here would let
    # the sweep's wake (and every later one) run a second lane beside it: two lanes of a
    # destination whose max_in_flight is 1, sending out of order.
    destination = sink_destination(account, sink)
    dead = due_log(
        destination, status=LogStatus.SENDING, next_attempt_at=timezone.now() - timedelta(seconds=1)
    )
    assert engine.take_slot(destination.pk, 0)  # the running lane

    assert tasks.sweep_now() == 1

    assert task_calls(enqueued) == []
    assert slot_held(destination)
    assert sink.received() == []
    status, attempt_count, due, error = state(dead)
    assert (status, attempt_count, error) == (LogStatus.RETRYING, 1, outbox.LOST_TRY_MESSAGE)
    assert due is not None
    assert due <= timezone.now()
    assert attempts(dead) == [(1, None, "OutcomeUnknown")]

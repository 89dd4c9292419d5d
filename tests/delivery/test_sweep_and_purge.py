"""The sweeper (tasks.sweep_now) re-enqueues what the queue lost, and never sends a finished
log again; retention (maintenance.logs_purge) deletes old rows in batches and keeps recent ones.
Huey is immediate here: an enqueued delivery runs at once against the sink."""

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from delivery import engine, maintenance, tasks, transport
from delivery.models import DeliveryAttempt, DeliveryLog, Event, LogStatus, Notice
from identity.models import Account
from tests.delivery.conftest import due_log, sink_destination, task_calls
from tests.factories import make_account, make_destination, make_event, make_log
from tests.sink import Sink


def ids(logs: list[DeliveryLog]) -> set[str]:
    return {log.webhook_id for log in logs}


def statuses() -> dict[int, str]:
    return dict(DeliveryLog.objects.values_list("pk", "status"))


@override_settings(DELIVERY_SWEEP_GRACE_SECONDS=60)
def test_sweep_reenqueues_overdue_and_abandoned_logs_only(
    account: Account, sink: Sink, enqueued: list[Any]
) -> None:
    destination = sink_destination(account, sink)
    now = timezone.now()
    ago, ahead = now - timedelta(seconds=61), now + timedelta(seconds=60)
    lost = [
        due_log(destination, status=LogStatus.QUEUED, next_attempt_at=ago),
        due_log(destination, status=LogStatus.RETRYING, next_attempt_at=ago),
        # Its worker died mid-send: the lease (next_attempt_at) ran out.
        due_log(destination, status=LogStatus.SENDING, next_attempt_at=now - timedelta(seconds=1)),
    ]
    # On a destination of their own: a lane woken for the lost ones would send them too.
    other = sink_destination(account, sink, "/other")
    left_alone = [
        due_log(other, status=LogStatus.QUEUED, next_attempt_at=now),  # within grace
        due_log(other, status=LogStatus.RETRYING, next_attempt_at=ahead),  # not yet due
        due_log(other, status=LogStatus.SENDING, next_attempt_at=ahead),  # lease running
        due_log(other, status=LogStatus.SUCCESS, next_attempt_at=ago),
        due_log(other, status=LogStatus.FAILED, next_attempt_at=ago),
    ]
    before = statuses()

    assert tasks.sweep_now() == 3

    # One lane for the destination delivers all three.
    assert task_calls(enqueued) == [(destination.pk, 0)]
    assert sink.webhook_ids() == dict.fromkeys(ids(lost), 1)
    after = statuses()
    assert {after[log.pk] for log in lost} == {LogStatus.SUCCESS}
    assert {log.pk: after[log.pk] for log in left_alone} == {
        log.pk: before[log.pk] for log in left_alone
    }


def test_repeated_sweeps_never_send_a_finished_log_again(
    account: Account, sink: Sink, enqueued: list[Any]
) -> None:
    destination = sink_destination(account, sink)
    ago = timezone.now() - timedelta(hours=1)
    lost = [due_log(destination, next_attempt_at=ago) for _ in range(3)]
    lost.append(due_log(destination, status=LogStatus.SENDING, next_attempt_at=ago))
    later = timezone.now() + timedelta(hours=1)

    assert tasks.sweep_now(now=later) == 4
    assert tasks.sweep_now(now=later) == 0
    assert tasks.sweep_now() == 0
    # The tasks the queue still held arrive late: the claim refuses them.
    for log in lost:
        tasks.deliver(log.pk)

    assert sink.webhook_ids() == dict.fromkeys(ids(lost), 1)
    # One lane for the sweep; each late task wakes a lane that finds nothing due.
    assert task_calls(enqueued) == [(destination.pk, 0)] * (1 + len(lost))
    assert set(statuses().values()) == {LogStatus.SUCCESS}
    # One attempt per send, and the abandoned send's lost try (outcome unknown) besides.
    assert DeliveryAttempt.objects.count() == 5
    assert list(lost[-1].attempts.values_list("number", "status_code", "error_class")) == [
        (1, None, "OutcomeUnknown"),
        (2, 200, ""),
    ]


def test_sweep_with_the_clock_ahead_makes_abandoned_sends_due_at_once(
    account: Account, sink: Sink
) -> None:
    destination = sink_destination(account, sink, "/status/500")
    log = due_log(destination, status=LogStatus.SENDING, next_attempt_at=timezone.now())

    assert tasks.sweep_now(now=timezone.now() + timedelta(minutes=10)) == 1

    log.refresh_from_db()
    # The lost try and the 500 of the new one.
    assert (log.status, log.attempt_count) == (LogStatus.RETRYING, 2)
    assert len(sink.received()) == 1


def test_sweep_respects_its_limit(account: Account, sink: Sink) -> None:
    destination = sink_destination(account, sink)
    ago = timezone.now() - timedelta(hours=1)
    for _ in range(5):
        due_log(destination, next_attempt_at=ago)
    # Each sweep re-arms at most `limit` logs (and names their destination's lane).
    assert [maintenance.logs_sweep(limit=2).count for _ in range(4)] == [2, 2, 1, 0]
    assert sink.received() == []
    # One lane then sends every due log of the destination.
    assert tasks.sweep_now() == 0
    tasks.wake_destinations([destination.pk])
    assert len(sink.received()) == 5


@override_settings(DELIVERY_LOG_RETENTION_DAYS=30)
def test_purge_deletes_old_logs_attempts_and_orphan_events_in_batches(
    account: Account, sink: Sink
) -> None:
    destination = sink_destination(account, sink)
    now = timezone.now()
    old = now - timedelta(days=31)
    recent = now - timedelta(days=29)

    def log_at(when: Any, attempts: int, event: Event | None = None) -> DeliveryLog:
        log = due_log(destination, status=LogStatus.SUCCESS, received_timestamp=when)
        if event is not None:
            stray = log.event
            DeliveryLog.objects.filter(pk=log.pk).update(event=event)
            stray.delete()
            log.refresh_from_db()
        else:
            Event.objects.filter(pk=log.event_id).update(received_at=when)
        for number in range(1, attempts + 1):
            DeliveryAttempt.objects.create(log=log, number=number, started_at=when, duration_ms=5)
        return log

    old_logs = [log_at(old, 2) for _ in range(3)]
    shared_event = old_logs[0].event
    old_logs.append(log_at(old, 1, event=shared_event))
    old_logs.append(log_at(old, 0))
    kept = [log_at(recent, 1) for _ in range(2)]
    # An old event that still has a recent log (redelivered later) is kept with it.
    kept.append(log_at(recent, 1, event=log_at(old, 0).event))
    orphan_old = Event.objects.create(
        account=account, event_id="orphan-old", payload={}, size=2, received_at=old
    )
    orphan_recent = Event.objects.create(
        account=account, event_id="orphan-recent", payload={}, size=2, received_at=recent
    )
    Notice.objects.create(account=account, kind="disabled", at=old, detail="old")
    recent_notice = Notice.objects.create(account=account, kind="enabled", at=recent)

    with CaptureQueriesContext(connection) as queries:
        counts = maintenance.logs_purge(batch=2)

    assert counts == {"logs": 6, "attempts": 7, "events": 5, "notices": 1}
    assert list(Notice.objects.values_list("pk", flat=True)) == [recent_notice.pk]
    assert sorted(DeliveryLog.objects.values_list("pk", flat=True)) == sorted(
        log.pk for log in kept
    )
    assert DeliveryAttempt.objects.count() == 3
    remaining_events = set(Event.objects.values_list("pk", flat=True))
    assert remaining_events == {log.event_id for log in kept} | {orphan_recent.pk}
    assert orphan_old.pk not in remaining_events
    log_deletes = [
        q["sql"] for q in queries if q["sql"].startswith('DELETE FROM "delivery_deliverylog"')
    ]
    assert len(log_deletes) == 3  # 6 old logs, 2 per batch
    assert maintenance.logs_purge(batch=2) == {"logs": 0, "attempts": 0, "events": 0, "notices": 0}


def test_a_send_that_outlives_its_lease_leaves_the_log_to_the_new_owner(
    account: Account, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = due_log(sink_destination(account, sink, "/status/503,200"))
    send = transport.send

    def send_past_the_lease(**kwargs: Any) -> transport.Outcome:
        outcome = send(**kwargs)  # the destination answers 503...
        # ...but the answer comes after the lease ran out: the sweeper took the log back and
        # another worker delivered it (immediate mode runs that task inline).
        monkeypatch.setattr(transport, "send", send)
        assert tasks.sweep_now(now=timezone.now() + timedelta(hours=1)) == 1
        return outcome

    monkeypatch.setattr(transport, "send", send_past_the_lease)

    assert engine.deliver_log(log_id=log.pk) is None

    log.refresh_from_db()
    assert (log.status, log.attempt_count, log.last_status_code) == (LogStatus.SUCCESS, 2, 200)
    # The try whose answer came too late is the lost try the sweeper recorded (its outcome was
    # unknown when the sweeper took the log back); the late answer changes nothing.
    assert list(log.attempts.values_list("number", "status_code", "error_class")) == [
        (1, None, "OutcomeUnknown"),
        (2, 200, ""),
    ]
    assert [r.headers["webhook-id"] for r in sink.received()] == [log.webhook_id] * 2


def test_a_second_sweep_does_not_re_enqueue_what_the_first_just_took(
    db: None, enqueued: list[Any]
) -> None:
    account, _ = make_account()
    destination = make_destination(account)
    event = make_event(account)
    log = make_log(event, destination, status="queued")
    DeliveryLog.objects.filter(pk=log.pk).update(
        next_attempt_at=timezone.now() - timedelta(hours=1)
    )
    with override_settings(DELIVERY_SWEEP_GRACE_SECONDS=60):
        assert tasks.sweep_now() == 1
        assert tasks.sweep_now() == 0
    assert task_calls(enqueued) == [(destination.pk, 0)]


# --- A lease that expires records the lost try ----------------------------------------------

LOST_MESSAGE = (
    "The worker stopped before recording this try's outcome "
    "(the request may have reached the destination)."
)


@override_settings(DELIVERY_RETRY_SCHEDULE=[5, 30])
def test_sweeper_records_the_lost_try_of_an_expired_lease(
    account: Account, sink: Sink, enqueued: list[Any]
) -> None:
    destination = sink_destination(account, sink, "/status/503,200")
    claimed_at = timezone.now() - timedelta(seconds=30)
    log = due_log(destination, status=LogStatus.SENDING, next_attempt_at=claimed_at)
    lease_end = claimed_at + timedelta(seconds=20)
    DeliveryLog.objects.filter(pk=log.pk).update(updated_at=claimed_at, next_attempt_at=lease_end)

    assert tasks.sweep_now() == 1

    [lost] = DeliveryAttempt.objects.filter(log=log, number=1)
    assert (lost.status_code, lost.error_class, lost.error_message) == (
        None,
        "OutcomeUnknown",
        LOST_MESSAGE,
    )
    assert (lost.started_at, lost.duration_ms) == (claimed_at, 20_000)
    assert (lost.response_headers, lost.response_body) == ({}, "")
    # Re-enqueued due at once; the new try (immediate mode) got the 503 and is retrying.
    assert task_calls(enqueued)[:1] == [(destination.pk, 0)]
    log.refresh_from_db()
    assert (log.status, log.attempt_count, log.last_status_code) == (LogStatus.RETRYING, 2, 503)
    assert list(log.attempts.values_list("number", "status_code", "error_class")) == [
        (1, None, "OutcomeUnknown"),
        (2, 503, "HTTPStatus"),
    ]
    assert len(sink.received()) == 1


@override_settings(DELIVERY_RETRY_SCHEDULE=[5])
def test_a_lost_try_counts_against_the_retry_schedule(
    account: Account, sink: Sink, enqueued: list[Any]
) -> None:
    # Two tries allowed; one was made, the second was lost: the log fails (a log whose sends
    # kill the worker cannot loop forever).
    destination = sink_destination(account, sink)
    log = due_log(
        destination,
        status=LogStatus.SENDING,
        next_attempt_at=timezone.now() - timedelta(seconds=1),
        attempt_count=1,
        last_status_code=503,
    )

    assert tasks.sweep_now() == 0

    log.refresh_from_db()
    assert (log.status, log.attempt_count, log.next_attempt_at) == (LogStatus.FAILED, 2, None)
    assert (log.last_status_code, log.last_error) == (None, LOST_MESSAGE)
    assert log.processed_timestamp is not None
    assert list(log.attempts.values_list("number", "status_code", "error_class")) == [
        (2, None, "OutcomeUnknown")
    ]
    assert enqueued == []
    assert sink.received() == []


def test_sweeper_and_a_late_worker_never_both_record_the_try(account: Account, sink: Sink) -> None:
    # The worker recorded its outcome just before the sweep: the sweeper records nothing.
    log = due_log(sink_destination(account, sink))
    assert engine.deliver_log(log_id=log.pk) == LogStatus.SUCCESS
    assert tasks.sweep_now(now=timezone.now() + timedelta(hours=1)) == 0
    assert list(log.attempts.values_list("number", "status_code")) == [(1, 200)]

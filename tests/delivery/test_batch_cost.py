"""Issue 9, target 3: a lane delivers a backlog with at most half an SQL statement per delivery.

100 queued logs of one destination on the real sink (tests/sink.py) are drained by
`engine.lane_run`, run again for as long as a run says its time slice ended with work left
(`again`), every statement on the default database counted. Real transactions
(`django_db(transaction=True)`): BEGIN and COMMIT are counted like the claims and writes.
What each log ends as is checked against what the sink answered the request carrying its
`webhook-id`: all 200, and a batch whose answers mix 200, 500 and 410."""

from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from delivery import engine
from delivery.models import DeliveryAttempt, DeliveryLog, LogStatus
from identity.models import Account
from tests.delivery.conftest import due_log, sink_destination
from tests.sink import Sink

pytestmark = pytest.mark.django_db(transaction=True)

LOGS = 100
STATEMENTS_PER_DELIVERY = 0.5
MAX_RUNS = 20  # a run lasts one time slice (DELIVERY_LANE_SLICE_SECONDS) at most

JITTER = settings.DELIVERY_RETRY_JITTER
STATUS_OF_CODE = {200: LogStatus.SUCCESS, 500: LogStatus.RETRYING, 404: LogStatus.FAILED}


@dataclass
class Drained:
    """The lane runs it took to drain a destination, and every statement they ran."""

    runs: list[engine.LaneRun] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)

    @property
    def per_delivery(self) -> float:
        return len(self.statements) / LOGS

    def report(self) -> str:
        verbs = Counter(sql.split(None, 1)[0] for sql in self.statements)
        return (
            f"{len(self.statements)} statements for {LOGS} deliveries "
            f"({self.per_delivery:.2f} each) in {len(self.runs)} lane runs: {dict(verbs)}"
        )


def drain(destination_id: int) -> Drained:
    """Run the destination's lane until a run ends with nothing more due now."""
    drained = Drained()
    while True:
        with CaptureQueriesContext(connection) as queries:
            run = engine.lane_run(destination_id)
        drained.runs.append(run)
        drained.statements += [query["sql"] for query in queries.captured_queries]
        if not run.again:
            return drained
        assert len(drained.runs) < MAX_RUNS, drained.runs


def queued_logs(account: Account, sink: Sink, path: str) -> list[DeliveryLog]:
    destination = sink_destination(account, sink, path)
    return [due_log(destination, {"n": n}) for n in range(LOGS)]


def assert_within_budget(drained: Drained) -> None:
    print(f"\n{drained.report()}")
    assert drained.per_delivery <= STATEMENTS_PER_DELIVERY, "\n".join(
        [drained.report(), *drained.statements]
    )


def test_lane_delivers_a_backlog_within_half_a_statement_per_delivery(
    account: Account, sink: Sink, enqueued: list[Any]
) -> None:
    logs = queued_logs(account, sink, "/hook")
    assert logs[0].destination_id is not None

    drained = drain(logs[0].destination_id)

    assert sum(run.sent for run in drained.runs) == LOGS
    assert [(run.deferred, run.spawn) for run in drained.runs] == [(False, [])] * len(drained.runs)
    assert drained.runs[-1].wake_at is None  # nothing left to wake for
    stored = DeliveryLog.objects.filter(pk__in=[log.pk for log in logs])
    assert sorted(stored.values_list("pk", "status", "attempt_count", "last_status_code")) == [
        (log.pk, LogStatus.SUCCESS, 1, 200) for log in logs
    ]
    attempts = DeliveryAttempt.objects.values_list("log_id", "number", "status_code")
    assert sorted(attempts) == [(log.pk, 1, 200) for log in logs]
    assert len(sink.received("/hook")) == LOGS
    assert sink.webhook_ids() == Counter({log.webhook_id: 1 for log in logs})
    assert enqueued == []  # the engine enqueues nothing; the task layer does
    assert_within_budget(drained)


def test_batch_with_mixed_answers_writes_each_log_its_own_outcome(
    account: Account, sink: Sink, enqueued: list[Any]
) -> None:
    # The n-th request to the path gets the n-th code: 200 and 500 interleaved, 404 last
    # (a 410 would disable the destination).
    codes = [500 if n % 3 == 1 else 200 for n in range(LOGS - 1)] + [404]
    path = "/status/" + ",".join(map(str, codes))
    logs = queued_logs(account, sink, path)
    assert logs[0].destination_id is not None

    drained = drain(logs[0].destination_id)

    requests = sink.received(path)
    assert len(requests) == LOGS
    code_of = {r.headers["webhook-id"]: code for r, code in zip(requests, codes, strict=True)}
    assert sorted(code_of) == sorted(log.webhook_id for log in logs)  # each sent once
    expected = {log.pk: code_of[log.webhook_id] for log in logs}
    assert Counter(expected.values()) == {200: 66, 500: 33, 404: 1}
    stored = DeliveryLog.objects.in_bulk([log.pk for log in logs])
    assert {
        pk: (log.status, log.attempt_count, log.last_status_code) for pk, log in stored.items()
    } == {pk: (STATUS_OF_CODE[code], 1, code) for pk, code in expected.items()}
    attempts = DeliveryAttempt.objects.values_list("log_id", "number", "status_code")
    assert sorted(attempts) == sorted((pk, 1, code) for pk, code in expected.items())
    assert [log.next_attempt_at for log in stored.values() if log.status != LogStatus.RETRYING] == (
        [None] * 67
    )
    # Retrying: due after the schedule's first delay, plus add-only jitter of its own.
    retrying = [log for log in stored.values() if log.status == LogStatus.RETRYING]
    first = settings.DELIVERY_RETRY_SCHEDULE[0]
    shortest, longest = timedelta(seconds=first), timedelta(seconds=first * (1 + JITTER))
    due, delays = [], []
    for log in retrying:
        assert log.next_attempt_at is not None
        assert log.processed_timestamp is not None
        due.append(log.next_attempt_at)
        delays.append(log.next_attempt_at - log.processed_timestamp)
    assert all(shortest <= delay <= longest for delay in delays), delays
    assert len(set(delays)) > 1
    # The lane stops with the retries not yet due, and says when it must be woken.
    assert drained.runs[-1].wake_at == min(due)
    assert sum(run.sent for run in drained.runs) == LOGS
    assert enqueued == []
    assert_within_budget(drained)

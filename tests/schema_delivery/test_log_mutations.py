"""logRetry and logsRetryFailed: every persona gets an exact payload; what is requeued is
exactly what is enqueued after commit, and a refused call writes and enqueues nothing.

Acme (admin is ADMIN, normal_user NORMAL_USER) holds logs a..f, "Other" (the outsider's) log g;
see `World` in conftest.py.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest

from delivery import tasks
from delivery.models import DeliveryLog
from tests.conftest import GraphQL, Persona
from tests.schema_delivery.conftest import Dispatched, World
from tests.schema_delivery.helpers import (
    OPERATION_INFO,
    PERMISSION_DENIED,
    UNAUTHENTICATED,
    db_state,
    invalid,
    not_found,
)

PERSONAS = ["admin", "normal_user", "outsider", "anonymous"]
_real_wake = tasks.wake_destinations  # before the autouse recorder replaces it
AfterCommit = Callable[[], AbstractContextManager[list[Any]]]

RETRY = f"""mutation ($id: ID!) {{ logRetry(id: $id) {{ __typename
    ... on DeliveryLog {{ id status attemptCount nextAttemptAt lastStatusCode }}
    {OPERATION_INFO} }} }}"""
RETRY_FAILED = f"""mutation ($filters: LogFilter) {{ logsRetryFailed(filters: $filters) {{
    __typename ... on LogsRetryResult {{ count }} {OPERATION_INFO} }} }}"""


def _statuses(world: World) -> dict[str, str]:
    return {name: DeliveryLog.objects.get(pk=log.pk).status for name, log in world.logs.items()}


# --- logRetry --------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", PERSONAS)
def test_log_retry_role_matrix(
    gql: GraphQL,
    personas: dict[str, Persona],
    world: World,
    after_commit: AfterCommit,
    dispatched: Dispatched,
    persona: str,
) -> None:
    log = world.logs["b"]  # failed
    before = db_state()

    with after_commit() as callbacks:
        body = gql(RETRY, {"id": str(log.pk)}, persona=personas[persona])

    if persona == "admin":
        log.refresh_from_db()
        assert body == {
            "data": {
                "logRetry": {
                    "__typename": "DeliveryLog",
                    "id": str(log.pk),
                    "status": "QUEUED",
                    "attemptCount": 1,
                    "nextAttemptAt": log.next_attempt_at.isoformat(),  # type: ignore[union-attr]
                    "lastStatusCode": 500,
                }
            }
        }
        # The retry schedule starts over from the attempts made so far.
        assert (log.status, log.schedule_offset) == ("queued", 1)
        assert dispatched == [[log.destination_id]]
        return
    payload = {
        "normal_user": PERMISSION_DENIED,
        # A foreign log answers exactly like a missing one.
        "outsider": not_found("Log"),
        "anonymous": UNAUTHENTICATED,
    }[persona]
    assert body == {"data": {"logRetry": payload}}
    assert db_state() == before
    assert callbacks == []
    assert dispatched == []


@pytest.mark.parametrize("name", ["a", "b", "c", "d", "f"])
def test_log_retry_redelivers_any_status_but_sending(
    gql: GraphQL,
    admin: Persona,
    world: World,
    after_commit: AfterCommit,
    dispatched: Dispatched,
    name: str,
) -> None:
    log = world.logs[name]

    with after_commit():
        body = gql(RETRY, {"id": str(log.pk)}, persona=admin)

    assert body["data"]["logRetry"]["status"] == "QUEUED"
    assert DeliveryLog.objects.get(pk=log.pk).status == "queued"
    assert dispatched == [[log.destination_id]]


def test_log_retry_of_a_log_being_sent_is_not_retryable(
    gql: GraphQL, admin: Persona, world: World, after_commit: AfterCommit, dispatched: Dispatched
) -> None:
    before = db_state()

    with after_commit() as callbacks:
        body = gql(RETRY, {"id": str(world.logs["e"].pk)}, persona=admin)

    assert body == {
        "data": {"logRetry": invalid("not_retryable", "The log is being sent right now.")}
    }
    assert db_state() == before
    assert callbacks == []
    assert dispatched == []


@pytest.mark.parametrize("missing_id", ["999999", "abc", "²"])
def test_log_retry_of_missing_id_is_not_found(
    gql: GraphQL, admin: Persona, world: World, missing_id: str
) -> None:
    body = gql(RETRY, {"id": missing_id}, persona=admin)

    assert body == {"data": {"logRetry": not_found("Log")}}


def test_log_retry_delivers_through_the_queue(
    gql: GraphQL,
    admin: Persona,
    world: World,
    after_commit: AfterCommit,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the recorder: the retry enqueues a lane task for the log's destination (Huey
    runs it inline in tests)."""
    enqueued: list[tuple[int, int]] = []
    monkeypatch.setattr(tasks, "wake_destinations", _real_wake)
    monkeypatch.setattr(tasks, "lane", lambda *args: enqueued.append(args))

    with after_commit():
        gql(RETRY, {"id": str(world.logs["a"].pk)}, persona=admin)

    assert enqueued == [(world.logs["a"].destination_id, 0)]


# --- logsRetryFailed -------------------------------------------------------------------------


@pytest.mark.parametrize("persona", PERSONAS)
def test_logs_retry_failed_role_matrix(
    gql: GraphQL,
    personas: dict[str, Persona],
    world: World,
    after_commit: AfterCommit,
    dispatched: Dispatched,
    persona: str,
) -> None:
    before = db_state()
    statuses = _statuses(world)

    with after_commit() as callbacks:
        body = gql(RETRY_FAILED, persona=personas[persona])

    requeued = {"admin": "bf", "outsider": "g"}.get(persona, "")
    if persona == "anonymous":
        assert body == {"data": {"logsRetryFailed": UNAUTHENTICATED}}
    else:
        assert body == {
            "data": {"logsRetryFailed": {"__typename": "LogsRetryResult", "count": len(requeued)}}
        }
    assert _statuses(world) == {
        name: "queued" if name in requeued else status for name, status in statuses.items()
    }
    assert sorted(d or 0 for call in dispatched for d in call) == sorted(
        world.logs[name].destination_id or 0 for name in requeued
    )
    if not requeued:
        # A normal user administers nothing: nothing is written or scheduled.
        assert db_state() == before
        assert callbacks == []


def test_logs_retry_failed_by_filter(
    gql: GraphQL, admin: Persona, world: World, after_commit: AfterCommit, dispatched: Dispatched
) -> None:
    with after_commit():
        body = gql(RETRY_FAILED, {"filters": {"destinationId": str(world.two.pk)}}, persona=admin)

    assert body["data"]["logsRetryFailed"]["count"] == 1
    assert _statuses(world)["b"] == "queued"
    assert _statuses(world)["f"] == "failed"
    assert dispatched == [[world.logs["b"].destination_id]]


def test_logs_retry_failed_ignores_the_status_filter(
    gql: GraphQL, admin: Persona, world: World, after_commit: AfterCommit, dispatched: Dispatched
) -> None:
    # Only failed logs are ever requeued, whatever the filter says.
    with after_commit():
        body = gql(RETRY_FAILED, {"filters": {"status": ["SUCCESS", "RETRYING"]}}, persona=admin)

    assert body["data"]["logsRetryFailed"]["count"] == 2
    assert _statuses(world) == {
        "a": "success",
        "b": "queued",
        "c": "retrying",
        "d": "queued",
        "e": "sending",
        "f": "queued",
        "g": "failed",
    }
    assert sorted(d or 0 for d in dispatched[0]) == sorted(
        [world.logs["b"].destination_id or 0, world.logs["f"].destination_id or 0]
    )


@pytest.mark.parametrize("persona", ["admin", "normal_user"])
def test_logs_retry_failed_on_a_foreign_account_requeues_nothing(
    gql: GraphQL,
    personas: dict[str, Persona],
    world: World,
    after_commit: AfterCommit,
    dispatched: Dispatched,
    persona: str,
) -> None:
    before = db_state()

    with after_commit() as callbacks:
        body = gql(
            RETRY_FAILED,
            {"filters": {"accountId": str(world.other.account_id)}},
            persona=personas[persona],
        )

    assert body == {"data": {"logsRetryFailed": {"__typename": "LogsRetryResult", "count": 0}}}
    assert db_state() == before
    assert callbacks == []
    assert dispatched == []

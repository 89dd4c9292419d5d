"""Log timestamp filters at the edges of the calendar: a bound whose UTC value falls before
year 1 or after year 9999 (what SQLite's adapter converts to) matches all or nothing, as it
would in PostgreSQL — never "Unexpected error."."""

from typing import Any

import pytest

from delivery.models import LogStatus
from identity.models import Account
from tests.conftest import GraphQL, Persona
from tests.delivery.conftest import due_log, sink_destination
from tests.sink import Sink

QUERY = "query($f: LogFilter) { logs(filters: $f) { edges { node { id } } } }"
EARLIEST = ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "0001-01-01T00:59:59+14:00"]
LATEST = ["9999-12-31T23:59:59Z", "9999-12-31T23:59:59-01:00", "9999-12-31T12:00:00-12:00"]


@pytest.fixture
def logs(account: Account, sink: Sink) -> list[int]:
    destination = sink_destination(account, sink)
    done = due_log(destination, status=LogStatus.SUCCESS)
    done.processed_timestamp = done.received_timestamp
    done.save()
    pending = due_log(destination)  # never processed: processed_timestamp is null
    return [done.pk, pending.pk]


def ids(gql: GraphQL, admin: Persona, field: str, op: str, value: str) -> list[int]:
    body: dict[str, Any] = gql(QUERY, {"f": {field: {op: value}}}, persona=admin)
    assert "errors" not in body, body
    return sorted(int(edge["node"]["id"]) for edge in body["data"]["logs"]["edges"])


@pytest.mark.parametrize("value", EARLIEST)
def test_bounds_at_the_earliest_time(
    gql: GraphQL, admin: Persona, logs: list[int], value: str
) -> None:
    done, pending = logs
    assert ids(gql, admin, "receivedTimestamp", "gte", value) == [done, pending]
    assert ids(gql, admin, "receivedTimestamp", "lte", value) == []
    assert ids(gql, admin, "processedTimestamp", "gte", value) == [done]
    assert ids(gql, admin, "processedTimestamp", "lte", value) == []


@pytest.mark.parametrize("value", LATEST)
def test_bounds_at_the_latest_time(
    gql: GraphQL, admin: Persona, logs: list[int], value: str
) -> None:
    done, pending = logs
    assert ids(gql, admin, "receivedTimestamp", "gte", value) == []
    assert ids(gql, admin, "receivedTimestamp", "lte", value) == [done, pending]
    assert ids(gql, admin, "processedTimestamp", "gte", value) == []
    assert ids(gql, admin, "processedTimestamp", "lte", value) == [done]

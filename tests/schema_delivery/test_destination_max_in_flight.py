"""Destination.maxInFlight through GraphQL: destinationCreate stores it (0 or left out: the
server's default, read as null), destinationUpdate changes it (0: back to the default; left out
or null: unchanged), and a value outside 0..100 is refused with `invalid_max_in_flight` on the
field, writing nothing and scheduling nothing."""

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest

from delivery.models import Destination
from identity.models import Account
from tests.conftest import GraphQL, Persona
from tests.schema_delivery.conftest import Dispatched
from tests.schema_delivery.helpers import (
    OPERATION_INFO,
    UNAUTHENTICATED,
    db_state,
    invalid,
    not_found,
)

AfterCommit = Callable[[], AbstractContextManager[list[Any]]]

FIELDS = "id maxInFlight"
CREATE = f"""mutation ($input: DestinationCreateInput!) {{
    destinationCreate(input: $input) {{ __typename ... on Destination {{ {FIELDS} }}
    {OPERATION_INFO} }} }}"""
UPDATE = f"""mutation ($id: ID!, $input: DestinationUpdateInput!) {{
    destinationUpdate(id: $id, input: $input) {{ __typename ... on Destination {{ {FIELDS} }}
    {OPERATION_INFO} }} }}"""
READ = "query ($id: ID!) { destination(id: $id) { id maxInFlight } }"

OUT_OF_RANGE = invalid(
    "invalid_max_in_flight", "Use 1 to 100, or 0 for the default.", "maxInFlight"
)


def _create_input(account: Account, **fields: Any) -> dict[str, Any]:
    return {
        "input": {
            "accountId": str(account.pk),
            "url": "http://127.0.0.1:9/new",
            "httpMethod": "POST",
            **fields,
        }
    }


def _destination(pk: int, max_in_flight: int | None) -> dict[str, Any]:
    return {"__typename": "Destination", "id": str(pk), "maxInFlight": max_in_flight}


# --- destinationCreate -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 3, 100])
def test_destination_create_stores_max_in_flight(
    gql: GraphQL, admin: Persona, account: Account, dispatched: Dispatched, value: int
) -> None:
    body = gql(CREATE, _create_input(account, maxInFlight=value), persona=admin)

    created = Destination.objects.get()
    assert body == {"data": {"destinationCreate": _destination(created.pk, value)}}
    assert created.max_in_flight == value
    assert gql(READ, {"id": str(created.pk)}, persona=admin) == {
        "data": {"destination": {"id": str(created.pk), "maxInFlight": value}}
    }
    assert dispatched == []


@pytest.mark.parametrize(
    "fields", [pytest.param({}, id="left-out"), pytest.param({"maxInFlight": 0}, id="zero")]
)
def test_destination_create_without_max_in_flight_uses_the_default(
    gql: GraphQL, admin: Persona, account: Account, fields: dict[str, Any]
) -> None:
    body = gql(CREATE, _create_input(account, **fields), persona=admin)

    created = Destination.objects.get()
    assert body == {"data": {"destinationCreate": _destination(created.pk, None)}}
    assert created.max_in_flight is None
    assert gql(READ, {"id": str(created.pk)}, persona=admin) == {
        "data": {"destination": {"id": str(created.pk), "maxInFlight": None}}
    }


@pytest.mark.parametrize("value", [101, -1])
def test_destination_create_refuses_max_in_flight_out_of_range(
    gql: GraphQL,
    admin: Persona,
    account: Account,
    after_commit: AfterCommit,
    dispatched: Dispatched,
    value: int,
) -> None:
    before = db_state()

    with after_commit() as callbacks:
        body = gql(CREATE, _create_input(account, maxInFlight=value), persona=admin)

    assert body == {"data": {"destinationCreate": OUT_OF_RANGE}}
    assert not Destination.objects.exists()
    assert db_state() == before
    assert callbacks == []
    assert dispatched == []


# --- destinationUpdate -----------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["admin", "normal_user"])
@pytest.mark.parametrize(
    ("changes", "stored"),
    [
        pytest.param({"maxInFlight": 0}, None, id="zero-resets"),
        pytest.param({"maxInFlight": 5}, 5, id="five"),
        pytest.param({"isActive": False}, 3, id="left-out"),
        pytest.param({"maxInFlight": None}, 3, id="null"),
    ],
)
def test_destination_update_max_in_flight(
    gql: GraphQL,
    personas: dict[str, Persona],
    destination: Destination,
    dispatched: Dispatched,
    persona: str,
    changes: dict[str, Any],
    stored: int | None,
) -> None:
    destination.max_in_flight = 3
    destination.save()

    body = gql(UPDATE, {"id": str(destination.pk), "input": changes}, persona=personas[persona])

    destination.refresh_from_db()
    assert body == {"data": {"destinationUpdate": _destination(destination.pk, stored)}}
    assert destination.max_in_flight == stored
    assert destination.updated_by == personas[persona].user
    assert dispatched == []


@pytest.mark.parametrize(
    ("persona", "value", "payload"),
    [
        pytest.param("admin", 101, OUT_OF_RANGE, id="admin-101"),
        pytest.param("normal_user", -1, OUT_OF_RANGE, id="normal_user--1"),
        pytest.param("outsider", 5, not_found("Destination"), id="outsider"),
        pytest.param("anonymous", 5, UNAUTHENTICATED, id="anonymous"),
    ],
)
def test_destination_update_of_max_in_flight_refused_writes_nothing(
    gql: GraphQL,
    personas: dict[str, Persona],
    destination: Destination,
    after_commit: AfterCommit,
    dispatched: Dispatched,
    persona: str,
    value: int,
    payload: dict[str, Any],
) -> None:
    destination.max_in_flight = 3
    destination.save()
    before = db_state()

    with after_commit() as callbacks:
        body = gql(
            UPDATE,
            {"id": str(destination.pk), "input": {"maxInFlight": value, "isActive": False}},
            persona=personas[persona],
        )

    assert body == {"data": {"destinationUpdate": payload}}
    assert db_state() == before
    destination.refresh_from_db()
    assert (destination.max_in_flight, destination.is_active) == (3, True)
    assert callbacks == []
    assert dispatched == []

"""Destination.maxInFlight and Destination.rateLimit through GraphQL: destinationCreate stores
each (0 or left out: the server's default, read as null), destinationUpdate changes it (0: back
to the default; left out or null: unchanged), and a value out of range is refused with its
`invalid_…` code on the field, writing nothing and scheduling nothing."""

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Limit:
    name: str  # the GraphQL field
    column: str  # the model field
    top: int  # the highest value allowed
    refused: dict[str, Any]  # the payload of a value out of range


LIMITS = [
    Limit(
        "maxInFlight",
        "max_in_flight",
        100,
        invalid("invalid_max_in_flight", "Use 1 to 100, or 0 for the default.", "maxInFlight"),
    ),
    Limit(
        "rateLimit",
        "rate_limit",
        10_000,
        invalid(
            "invalid_rate_limit",
            "Use 1 to 10000 requests per second, or 0 for the default.",
            "rateLimit",
        ),
    ),
]


@pytest.fixture(params=LIMITS, ids=[limit.name for limit in LIMITS])
def limit(request: pytest.FixtureRequest) -> Limit:
    chosen: Limit = request.param
    return chosen


def _mutation(name: str, signature: str, call: str, limit: Limit) -> str:
    return f"""mutation ({signature}) {{ {name}({call}) {{ __typename
        ... on Destination {{ id {limit.name} }} {OPERATION_INFO} }} }}"""


def create(limit: Limit) -> str:
    return _mutation("destinationCreate", "$input: DestinationCreateInput!", "input: $input", limit)


def update(limit: Limit) -> str:
    return _mutation(
        "destinationUpdate",
        "$id: ID!, $input: DestinationUpdateInput!",
        "id: $id, input: $input",
        limit,
    )


def read(limit: Limit) -> str:
    return f"query ($id: ID!) {{ destination(id: $id) {{ id {limit.name} }} }}"


def _create_input(account: Account, **fields: Any) -> dict[str, Any]:
    return {
        "input": {
            "accountId": str(account.pk),
            "url": "http://127.0.0.1:9/new",
            "httpMethod": "POST",
            **fields,
        }
    }


def _destination(pk: int, limit: Limit, value: int | None) -> dict[str, Any]:
    return {"__typename": "Destination", "id": str(pk), limit.name: value}


# --- destinationCreate -----------------------------------------------------------------------


@pytest.mark.parametrize("at", ["low", "mid", "top"])
def test_destination_create_stores_the_limit(
    gql: GraphQL, admin: Persona, account: Account, dispatched: Dispatched, limit: Limit, at: str
) -> None:
    value = {"low": 1, "mid": 3, "top": limit.top}[at]
    body = gql(create(limit), _create_input(account, **{limit.name: value}), persona=admin)

    created = Destination.objects.get()
    assert body == {"data": {"destinationCreate": _destination(created.pk, limit, value)}}
    assert getattr(created, limit.column) == value
    assert gql(read(limit), {"id": str(created.pk)}, persona=admin) == {
        "data": {"destination": {"id": str(created.pk), limit.name: value}}
    }
    assert dispatched == []


@pytest.mark.parametrize("given", ["left-out", "zero"])
def test_destination_create_without_the_limit_uses_the_default(
    gql: GraphQL, admin: Persona, account: Account, limit: Limit, given: str
) -> None:
    fields = {} if given == "left-out" else {limit.name: 0}
    body = gql(create(limit), _create_input(account, **fields), persona=admin)

    created = Destination.objects.get()
    assert body == {"data": {"destinationCreate": _destination(created.pk, limit, None)}}
    assert getattr(created, limit.column) is None
    assert gql(read(limit), {"id": str(created.pk)}, persona=admin) == {
        "data": {"destination": {"id": str(created.pk), limit.name: None}}
    }


@pytest.mark.parametrize("side", ["above", "below"])
def test_destination_create_refuses_the_limit_out_of_range(
    gql: GraphQL,
    admin: Persona,
    account: Account,
    after_commit: AfterCommit,
    dispatched: Dispatched,
    limit: Limit,
    side: str,
) -> None:
    value = limit.top + 1 if side == "above" else -1
    before = db_state()

    with after_commit() as callbacks:
        body = gql(create(limit), _create_input(account, **{limit.name: value}), persona=admin)

    assert body == {"data": {"destinationCreate": limit.refused}}
    assert not Destination.objects.exists()
    assert db_state() == before
    assert callbacks == []
    assert dispatched == []


# --- destinationUpdate -----------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["admin", "normal_user"])
@pytest.mark.parametrize(
    ("changes", "stored"),
    [
        pytest.param(0, None, id="zero-resets"),
        pytest.param(5, 5, id="five"),
        pytest.param("left-out", 3, id="left-out"),
        pytest.param(None, 3, id="null"),
    ],
)
def test_destination_update_of_the_limit(
    gql: GraphQL,
    personas: dict[str, Persona],
    destination: Destination,
    dispatched: Dispatched,
    limit: Limit,
    persona: str,
    changes: int | str | None,
    stored: int | None,
) -> None:
    setattr(destination, limit.column, 3)
    destination.save()
    fields = {"url": "http://127.0.0.1:9/other"} if changes == "left-out" else {}
    if changes != "left-out":
        fields[limit.name] = changes  # type: ignore[assignment]

    body = gql(
        update(limit), {"id": str(destination.pk), "input": fields}, persona=personas[persona]
    )

    destination.refresh_from_db()
    assert body == {"data": {"destinationUpdate": _destination(destination.pk, limit, stored)}}
    assert getattr(destination, limit.column) == stored
    assert destination.updated_by == personas[persona].user
    assert dispatched == []


@pytest.mark.parametrize(
    ("persona", "value"),
    [
        pytest.param("admin", "above", id="admin-above"),
        pytest.param("normal_user", -1, id="normal_user--1"),
        pytest.param("outsider", 5, id="outsider"),
        pytest.param("anonymous", 5, id="anonymous"),
    ],
)
def test_destination_update_of_the_limit_refused_writes_nothing(
    gql: GraphQL,
    personas: dict[str, Persona],
    destination: Destination,
    after_commit: AfterCommit,
    dispatched: Dispatched,
    limit: Limit,
    persona: str,
    value: int | str,
) -> None:
    setattr(destination, limit.column, 3)
    destination.save()
    before = db_state()
    payload = {
        "outsider": not_found("Destination"),
        "anonymous": UNAUTHENTICATED,
    }.get(persona, limit.refused)

    with after_commit() as callbacks:
        body = gql(
            update(limit),
            {
                "id": str(destination.pk),
                "input": {
                    limit.name: limit.top + 1 if value == "above" else value,
                    "isActive": False,
                },
            },
            persona=personas[persona],
        )

    assert body == {"data": {"destinationUpdate": payload}}
    assert db_state() == before
    destination.refresh_from_db()
    assert (getattr(destination, limit.column), destination.is_active) == (3, True)
    assert callbacks == []
    assert dispatched == []

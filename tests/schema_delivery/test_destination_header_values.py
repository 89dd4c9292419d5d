"""destinationCreate/Update: header values must be what HTTP can carry unchanged (RFC 9110
field values, ASCII only: visible characters with spaces or tabs between them). A value the
HTTP client cannot encode (e.g. "☃") used to be accepted, and every send of it died before the
request. A refused value names its header and writes nothing."""

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest

from delivery.models import Destination
from identity.models import Account
from tests.conftest import GraphQL, Persona
from tests.schema_delivery.conftest import Dispatched
from tests.schema_delivery.helpers import OPERATION_INFO, db_state, invalid

AfterCommit = Callable[[], AbstractContextManager[list[Any]]]

CREATE = f"""mutation ($input: DestinationCreateInput!) {{
    destinationCreate(input: $input) {{ __typename ... on Destination {{ headers }}
    {OPERATION_INFO} }} }}"""
UPDATE = f"""mutation ($id: ID!, $input: DestinationUpdateInput!) {{
    destinationUpdate(id: $id, input: $input) {{ __typename ... on Destination {{ headers }}
    {OPERATION_INFO} }} }}"""

BAD_VALUES = [
    pytest.param("\u2603", id="not-latin-1"),
    pytest.param("caf\u00e9", id="latin-1-not-ascii"),
    pytest.param("a\x01b", id="control"),
    pytest.param("a\x7fb", id="delete"),
    pytest.param(" Bearer x", id="leading-space"),
    pytest.param("Bearer x\t", id="trailing-tab"),
]


def refused(name: str) -> dict[str, Any]:
    return invalid(
        "invalid_headers",
        f"Header {name} may hold only visible ASCII characters, with spaces or tabs between them.",
        "headers",
    )


@pytest.mark.parametrize("value", BAD_VALUES)
def test_destination_create_refuses_a_header_value_http_cannot_carry(
    gql: GraphQL,
    admin: Persona,
    account: Account,
    after_commit: AfterCommit,
    dispatched: Dispatched,
    value: str,
) -> None:
    variables = {
        "input": {
            "accountId": str(account.pk),
            "url": "http://127.0.0.1:9/x",
            "httpMethod": "POST",
            "headers": {"X-Ok": "1", "X-Snow": value},
        }
    }
    before = db_state()

    with after_commit() as callbacks:
        body = gql(CREATE, variables, persona=admin)

    assert body == {"data": {"destinationCreate": refused("X-Snow")}}
    assert db_state() == before
    assert (callbacks, dispatched) == ([], [])


@pytest.mark.parametrize("value", BAD_VALUES)
def test_destination_update_refuses_a_header_value_http_cannot_carry(
    gql: GraphQL,
    admin: Persona,
    destination: Destination,
    after_commit: AfterCommit,
    dispatched: Dispatched,
    value: str,
) -> None:
    before = db_state()

    with after_commit() as callbacks:
        body = gql(
            UPDATE,
            {"id": str(destination.pk), "input": {"headers": {"Authorization": value}}},
            persona=admin,
        )

    assert body == {"data": {"destinationUpdate": refused("Authorization")}}
    assert db_state() == before
    assert (callbacks, dispatched) == ([], [])


def test_header_values_with_inner_spaces_tabs_and_punctuation_are_accepted(
    gql: GraphQL, admin: Persona, account: Account
) -> None:
    headers = {"Authorization": "Bearer a.b~c/d+e=", "X-List": "a, b\tc", "X-Empty": ""}
    body = gql(
        CREATE,
        {
            "input": {
                "accountId": str(account.pk),
                "url": "http://127.0.0.1:9/x",
                "httpMethod": "POST",
                "headers": headers,
            }
        },
        persona=admin,
    )

    assert body == {
        "data": {"destinationCreate": {"__typename": "Destination", "headers": headers}}
    }
    assert Destination.objects.get().headers == headers


def test_header_name_with_a_trailing_newline_is_refused(
    gql: GraphQL, admin: Persona, account: Account
) -> None:
    # `$` in a regular expression also matches before a final "\n".
    body = gql(
        CREATE,
        {
            "input": {
                "accountId": str(account.pk),
                "url": "http://127.0.0.1:9/x",
                "httpMethod": "POST",
                "headers": {"X-A\n": "1"},
            }
        },
        persona=admin,
    )

    assert body == {
        "data": {
            "destinationCreate": invalid(
                "invalid_headers", "Invalid header name: 'X-A\\n'.", "headers"
            )
        }
    }
    assert not Destination.objects.exists()

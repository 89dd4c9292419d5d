"""destinationCreate/Update/Delete/RotateSecret: every persona gets an exact payload, and a
refused call writes nothing and schedules nothing.

The target is the `account` fixture ("Acme"): admin is its ADMIN, normal_user its NORMAL_USER,
outsider administers another account ("Other") only.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from django.test import override_settings

from delivery.models import DeliveryLog, Destination
from identity.models import Account
from tests.conftest import GraphQL, Persona
from tests.factories import make_event, make_log
from tests.schema_delivery.conftest import Dispatched
from tests.schema_delivery.helpers import (
    OPERATION_INFO,
    PERMISSION_DENIED,
    UNAUTHENTICATED,
    db_state,
    invalid,
    not_found,
)

PERSONAS = ["admin", "normal_user", "outsider", "anonymous"]
AfterCommit = Callable[[], AbstractContextManager[list[Any]]]

FIELDS = "id account { id } url httpMethod headers isActive signingSecret"
CREATE = f"""mutation ($input: DestinationCreateInput!) {{
    destinationCreate(input: $input) {{ __typename ... on Destination {{ {FIELDS} }}
    {OPERATION_INFO} }} }}"""
UPDATE = f"""mutation ($id: ID!, $input: DestinationUpdateInput!) {{
    destinationUpdate(id: $id, input: $input) {{ __typename ... on Destination {{ {FIELDS} }}
    {OPERATION_INFO} }} }}"""
DELETE = f"""mutation ($id: ID!) {{
    destinationDelete(id: $id) {{ __typename ... on Deleted {{ id }} {OPERATION_INFO} }} }}"""
ROTATE = f"""mutation ($id: ID!) {{
    destinationRotateSecret(id: $id) {{ __typename ... on Destination {{ {FIELDS} }}
    {OPERATION_INFO} }} }}"""


def _destination(d: Destination) -> dict[str, Any]:
    return {
        "__typename": "Destination",
        "id": str(d.pk),
        "account": {"id": str(d.account_id)},
        "url": d.url,
        "httpMethod": d.http_method,
        "headers": d.headers,
        "isActive": d.is_active,
        "signingSecret": d.signing_secret,
    }


def _assert_refused(
    body: dict[str, Any],
    field: str,
    payload: dict[str, Any],
    before: dict[str, Any],
    callbacks: list[Any],
    dispatched: Dispatched,
) -> None:
    assert body == {"data": {field: payload}}
    assert db_state() == before
    assert callbacks == []
    assert dispatched == []


# --- destinationCreate -----------------------------------------------------------------------


@pytest.mark.parametrize("persona", PERSONAS)
def test_destination_create_role_matrix(
    gql: GraphQL,
    personas: dict[str, Persona],
    account: Account,
    after_commit: AfterCommit,
    dispatched: Dispatched,
    persona: str,
) -> None:
    variables = {
        "input": {
            "accountId": str(account.pk),
            "url": "http://127.0.0.1:9/new",
            "httpMethod": "PUT",
            "headers": {"Authorization": "Bearer abc"},
            "isActive": False,
        }
    }
    before = db_state()

    with after_commit() as callbacks:
        body = gql(CREATE, variables, persona=personas[persona])

    if persona == "admin":
        created = Destination.objects.get()
        assert body == {"data": {"destinationCreate": _destination(created)}}
        assert (created.account, created.url, created.http_method) == (
            account,
            "http://127.0.0.1:9/new",
            "PUT",
        )
        assert created.headers == {"Authorization": "Bearer abc"}
        assert created.is_active is False
        assert created.signing_secret.startswith("whsec_")
        assert created.created_by == created.updated_by == personas["admin"].user
        assert dispatched == []
        return
    payload = {
        "normal_user": PERMISSION_DENIED,
        # A foreign account answers exactly like a missing one.
        "outsider": not_found("Account"),
        "anonymous": UNAUTHENTICATED,
    }[persona]
    _assert_refused(body, "destinationCreate", payload, before, callbacks, dispatched)


def test_destination_create_defaults(gql: GraphQL, admin: Persona, account: Account) -> None:
    body = gql(
        CREATE,
        {
            "input": {
                "accountId": str(account.pk),
                "url": " https://example.com/h ",
                "httpMethod": "GET",
            }
        },
        persona=admin,
    )

    created = Destination.objects.get()
    assert body == {"data": {"destinationCreate": _destination(created)}}
    assert (created.url, created.headers, created.is_active) == ("https://example.com/h", {}, True)


@pytest.mark.parametrize("account_id", ["00000000-0000-0000-0000-000000000000", "nope", "12"])
def test_destination_create_in_missing_account_is_not_found(
    gql: GraphQL, admin: Persona, account_id: str
) -> None:
    body = gql(
        CREATE,
        {"input": {"accountId": account_id, "url": "http://127.0.0.1:9/x", "httpMethod": "POST"}},
        persona=admin,
    )

    assert body == {"data": {"destinationCreate": not_found("Account")}}
    assert Destination.objects.count() == 0


RESERVED = "is set by Data Pusher or is hop-by-hop; it cannot be set."


@pytest.mark.parametrize(
    ("changes", "payload"),
    [
        ({"url": "not a url"}, invalid("invalid_url", "Enter a valid http(s) URL.", "url")),
        (
            {"url": "ftp://example.com/x"},
            invalid("invalid_url", "Enter a valid http(s) URL.", "url"),
        ),
        (
            {"url": "http://example.com/" + "a" * 2000},
            invalid("invalid_url", "At most 2000 characters.", "url"),
        ),
        (
            {"headers": ["X-A", "1"]},
            invalid("invalid_headers", "Headers must be a JSON object of strings.", "headers"),
        ),
        (
            # An empty list is not an empty object either.
            {"headers": []},
            invalid("invalid_headers", "Headers must be a JSON object of strings.", "headers"),
        ),
        (
            {"headers": {"X-A": 1}},
            invalid(
                "invalid_headers",
                "Header X-A must be a single-line string of at most 4096 characters.",
                "headers",
            ),
        ),
        (
            {"headers": {"X-A": "a\r\nInjected: 1"}},
            invalid(
                "invalid_headers",
                "Header X-A must be a single-line string of at most 4096 characters.",
                "headers",
            ),
        ),
        (
            {"headers": {"bad name": "1"}},
            invalid("invalid_headers", "Invalid header name: 'bad name'.", "headers"),
        ),
        (
            {"headers": {"webhook-signature": "forged"}},
            invalid("invalid_headers", f"Header webhook-signature {RESERVED}", "headers"),
        ),
        (
            {"headers": {"Content-Type": "text/plain"}},
            invalid("invalid_headers", f"Header Content-Type {RESERVED}", "headers"),
        ),
        (
            {"headers": {"X-A": "1", "x-a": "2"}},
            invalid("invalid_headers", "Header x-a is given twice.", "headers"),
        ),
        (
            {"headers": {f"X-{n}": "1" for n in range(51)}},
            invalid("invalid_headers", "At most 50 headers.", "headers"),
        ),
    ],
)
def test_destination_create_validation_codes(
    gql: GraphQL,
    admin: Persona,
    account: Account,
    after_commit: AfterCommit,
    dispatched: Dispatched,
    changes: dict[str, Any],
    payload: dict[str, Any],
) -> None:
    variables = {
        "input": {
            "accountId": str(account.pk),
            "url": "http://127.0.0.1:9/x",
            "httpMethod": "POST",
            **changes,
        }
    }
    before = db_state()

    with after_commit() as callbacks:
        body = gql(CREATE, variables, persona=admin)

    _assert_refused(body, "destinationCreate", payload, before, callbacks, dispatched)


@override_settings(DELIVERY_ALLOW_PRIVATE_NETWORKS=False)
@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/x", "http://localhost:8000/x", "http://10.0.0.1/", "http://[::1]/"]
)
def test_destination_create_refuses_private_addresses_unless_allowed(
    gql: GraphQL, admin: Persona, account: Account, url: str
) -> None:
    body = gql(
        CREATE,
        {"input": {"accountId": str(account.pk), "url": url, "httpMethod": "POST"}},
        persona=admin,
    )

    assert body == {
        "data": {
            "destinationCreate": invalid(
                "invalid_url",
                "Private, loopback and link-local destinations are not allowed.",
                "url",
            )
        }
    }
    assert Destination.objects.count() == 0


def test_destination_create_with_unknown_method_is_a_query_error(
    gql: GraphQL, admin: Persona, account: Account
) -> None:
    # HttpMethod is an enum: a wrong value never reaches the service (so no invalid_method).
    body = gql(
        CREATE,
        {
            "input": {
                "accountId": str(account.pk),
                "url": "http://127.0.0.1:9/x",
                "httpMethod": "FETCH",
            }
        },
        persona=admin,
    )

    assert body["data"] is None
    assert "FETCH" in body["errors"][0]["message"]
    assert Destination.objects.count() == 0


# --- destinationUpdate -----------------------------------------------------------------------


@pytest.mark.parametrize("persona", PERSONAS)
def test_destination_update_role_matrix(
    gql: GraphQL,
    personas: dict[str, Persona],
    destination: Destination,
    after_commit: AfterCommit,
    dispatched: Dispatched,
    persona: str,
) -> None:
    variables = {
        "id": str(destination.pk),
        "input": {"url": "https://example.com/changed", "httpMethod": "PATCH", "isActive": False},
    }
    before = db_state()

    with after_commit() as callbacks:
        body = gql(UPDATE, variables, persona=personas[persona])

    if persona in ("admin", "normal_user"):
        destination.refresh_from_db()
        expected = _destination(destination)
        if persona == "normal_user":
            expected["signingSecret"] = None
            expected["headers"] = {"X-Key": "********"}
        assert body == {"data": {"destinationUpdate": expected}}
        assert (destination.url, destination.http_method, destination.is_active) == (
            "https://example.com/changed",
            "PATCH",
            False,
        )
        # Untouched fields stay.
        assert destination.headers == {"X-Key": "1"}
        assert destination.updated_by == personas[persona].user
        assert dispatched == []
        return
    payload = {"outsider": not_found("Destination"), "anonymous": UNAUTHENTICATED}[persona]
    _assert_refused(body, "destinationUpdate", payload, before, callbacks, dispatched)


def test_destination_update_with_null_and_missing_fields_changes_only_the_given_ones(
    gql: GraphQL, admin: Persona, destination: Destination
) -> None:
    body = gql(
        UPDATE,
        {"id": str(destination.pk), "input": {"url": None, "headers": {"X-New": "2"}}},
        persona=admin,
    )

    destination.refresh_from_db()
    assert body == {"data": {"destinationUpdate": _destination(destination)}}
    assert (destination.url, destination.http_method, destination.headers) == (
        "http://127.0.0.1:9/acme",
        "POST",
        {"X-New": "2"},
    )


def test_destination_update_validation_writes_nothing(
    gql: GraphQL, normal_user: Persona, destination: Destination
) -> None:
    before = db_state()

    body = gql(
        UPDATE,
        {"id": str(destination.pk), "input": {"isActive": False, "headers": {"Host": "x"}}},
        persona=normal_user,
    )

    assert body == {
        "data": {
            "destinationUpdate": invalid("invalid_headers", f"Header Host {RESERVED}", "headers")
        }
    }
    assert db_state() == before


@pytest.mark.parametrize("missing_id", ["999999", "abc", "²"])
def test_destination_update_of_missing_id_is_not_found(
    gql: GraphQL, admin: Persona, destination: Destination, missing_id: str
) -> None:
    body = gql(UPDATE, {"id": missing_id, "input": {"isActive": False}}, persona=admin)

    assert body == {"data": {"destinationUpdate": not_found("Destination")}}


# --- destinationDelete -----------------------------------------------------------------------


@pytest.mark.parametrize("persona", PERSONAS)
def test_destination_delete_role_matrix(
    gql: GraphQL,
    personas: dict[str, Persona],
    destination: Destination,
    after_commit: AfterCommit,
    dispatched: Dispatched,
    persona: str,
) -> None:
    log = make_log(make_event(destination.account), destination, "success")
    before = db_state()

    with after_commit() as callbacks:
        body = gql(DELETE, {"id": str(destination.pk)}, persona=personas[persona])

    if persona == "admin":
        assert body == {
            "data": {"destinationDelete": {"__typename": "Deleted", "id": str(destination.pk)}}
        }
        assert not Destination.objects.exists()
        # The log stays for the record.
        assert DeliveryLog.objects.get().pk == log.pk
        assert DeliveryLog.objects.get().destination is None
        assert dispatched == []
        return
    payload = {
        "normal_user": PERMISSION_DENIED,
        "outsider": not_found("Destination"),
        "anonymous": UNAUTHENTICATED,
    }[persona]
    _assert_refused(body, "destinationDelete", payload, before, callbacks, dispatched)


# --- destinationRotateSecret -----------------------------------------------------------------


@pytest.mark.parametrize("persona", PERSONAS)
def test_destination_rotate_secret_role_matrix(
    gql: GraphQL,
    personas: dict[str, Persona],
    destination: Destination,
    after_commit: AfterCommit,
    dispatched: Dispatched,
    persona: str,
) -> None:
    old_secret = destination.signing_secret
    before = db_state()

    with after_commit() as callbacks:
        body = gql(ROTATE, {"id": str(destination.pk)}, persona=personas[persona])

    if persona == "admin":
        destination.refresh_from_db()
        assert destination.signing_secret != old_secret
        assert destination.signing_secret.startswith("whsec_")
        assert body == {"data": {"destinationRotateSecret": _destination(destination)}}
        assert dispatched == []
        return
    payload = {
        "normal_user": PERMISSION_DENIED,
        "outsider": not_found("Destination"),
        "anonymous": UNAUTHENTICATED,
    }[persona]
    _assert_refused(body, "destinationRotateSecret", payload, before, callbacks, dispatched)

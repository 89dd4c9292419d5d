"""`destinations` and `destination(id)`: every persona, every filter, the signing secret rule and
the query count.

The target is the `account` fixture ("Acme"): admin is its ADMIN, normal_user its NORMAL_USER,
outsider administers another account ("Other") only.
"""

from typing import Any

import pytest

from delivery.models import Destination
from identity.auth import token_issue
from identity.models import Account, Membership
from tests.conftest import GraphQL, Persona, error_codes
from tests.factories import add_member, make_account, make_destination, make_user

PERSONAS = ["admin", "normal_user", "outsider", "anonymous"]

FIELDS = """id account { id name } url httpMethod headers isActive signingSecret
    createdAt updatedAt"""
DESTINATIONS = f"""query ($filters: DestinationFilter) {{
    destinations(filters: $filters) {{ {FIELDS} }} }}"""
DESTINATION = f"query ($id: ID!) {{ destination(id: $id) {{ {FIELDS} }} }}"


def _destination(d: Destination, *, secret: bool) -> dict[str, Any]:
    # Header values, like the secret, are for ADMINs: others see the names only.
    return {
        "id": str(d.pk),
        "account": {"id": str(d.account.pk), "name": d.account.name},
        "url": d.url,
        "httpMethod": d.http_method,
        "headers": d.headers if secret else dict.fromkeys(d.headers, "********"),
        "isActive": d.is_active,
        "signingSecret": d.signing_secret if secret else None,
        "createdAt": d.created_at.isoformat(),
        "updatedAt": d.updated_at.isoformat(),
    }


def assert_unauthenticated(body: dict[str, Any], data: dict[str, Any] | None) -> None:
    assert body["data"] == data
    assert error_codes(body) == ["unauthenticated"]
    assert [error["message"] for error in body["errors"]] == ["Authentication required."]


@pytest.fixture
def acme_and_other(account: Account, other_account: Account) -> dict[str, list[Destination]]:
    return {
        "acme": [
            make_destination(account, "http://127.0.0.1:9/a", headers={"X-Key": "1"}),
            make_destination(account, "http://127.0.0.1:9/b", http_method="GET", is_active=False),
        ],
        "other": [make_destination(other_account, "http://127.0.0.1:9/other")],
    }


@pytest.mark.parametrize("persona", PERSONAS)
def test_destinations_role_matrix(
    gql: GraphQL,
    personas: dict[str, Persona],
    acme_and_other: dict[str, list[Destination]],
    persona: str,
) -> None:
    acme, other = acme_and_other["acme"], acme_and_other["other"]
    expected = {
        "admin": [_destination(d, secret=True) for d in acme],
        # Members who are not ADMIN see the destination but not its secret.
        "normal_user": [_destination(d, secret=False) for d in acme],
        # The outsider administers "Other" only.
        "outsider": [_destination(d, secret=True) for d in other],
    }

    body = gql(DESTINATIONS, persona=personas[persona])

    if persona == "anonymous":
        assert_unauthenticated(body, None)
    else:
        assert body == {"data": {"destinations": expected[persona]}}


@pytest.mark.parametrize("persona", PERSONAS)
def test_destination_role_matrix(
    gql: GraphQL, personas: dict[str, Persona], destination: Destination, persona: str
) -> None:
    expected = {
        "admin": _destination(destination, secret=True),
        "normal_user": _destination(destination, secret=False),
        # A foreign destination reads as missing.
        "outsider": None,
    }

    body = gql(DESTINATION, {"id": str(destination.pk)}, persona=personas[persona])

    if persona == "anonymous":
        assert_unauthenticated(body, {"destination": None})
    else:
        assert body == {"data": {"destination": expected[persona]}}


@pytest.mark.parametrize("missing_id", ["999999", "abc", "-1", "99999999999999999999999", "²"])
def test_destination_with_missing_or_malformed_id_is_null(
    gql: GraphQL, admin: Persona, destination: Destination, missing_id: str
) -> None:
    body = gql(DESTINATION, {"id": missing_id}, persona=admin)

    assert body == {"data": {"destination": None}}


def test_signing_secret_is_shown_per_account_by_role(gql: GraphQL, admin: Persona) -> None:
    # Nora is NORMAL_USER of "Acme" and ADMIN of her own account: one list, two answers.
    nora = make_user("nora2@example.com")
    acme = Account.objects.get(name="Acme")
    add_member(acme, nora, "NORMAL_USER")
    own, _ = make_account(admin=nora, name="Nora's")
    acme_destination = make_destination(acme)
    own_destination = make_destination(own)

    body = gql("{ destinations { id signingSecret } }", token=token_issue(user=nora))

    assert body == {
        "data": {
            "destinations": [
                {"id": str(acme_destination.pk), "signingSecret": None},
                {"id": str(own_destination.pk), "signingSecret": own_destination.signing_secret},
            ]
        }
    }


def test_superuser_sees_every_destination_with_its_secret(
    gql: GraphQL, acme_and_other: dict[str, list[Destination]]
) -> None:

    root = make_user("root@example.com", is_superuser=True, is_staff=True)

    body = gql("{ destinations { id signingSecret } }", token=token_issue(user=root))

    everything = acme_and_other["acme"] + acme_and_other["other"]
    assert body == {
        "data": {
            "destinations": [
                {"id": str(d.pk), "signingSecret": d.signing_secret} for d in everything
            ]
        }
    }


# --- Filters ---------------------------------------------------------------------------------


def _ids(body: dict[str, Any]) -> list[str]:
    assert "errors" not in body, body
    return [d["id"] for d in body["data"]["destinations"]]


@pytest.fixture
def assorted(account: Account) -> dict[str, Destination]:
    return {
        "post": make_destination(account, "http://127.0.0.1:9/orders"),
        "get": make_destination(account, "http://127.0.0.1:9/Orders/get", http_method="GET"),
        "inactive": make_destination(account, "http://127.0.0.1:9/misc", is_active=False),
    }


@pytest.mark.parametrize(
    ("filters", "names"),
    [
        ({}, ["post", "get", "inactive"]),
        ({"httpMethod": "GET"}, ["get"]),
        ({"httpMethod": "POST"}, ["post", "inactive"]),
        ({"isActive": True}, ["post", "get"]),
        ({"isActive": False}, ["inactive"]),
        ({"urlContains": "orders"}, ["post", "get"]),
        ({"urlContains": "ORDERS/GET"}, ["get"]),
        ({"urlContains": "orders", "httpMethod": "POST"}, ["post"]),
        ({"urlContains": "nothing"}, []),
    ],
)
def test_destinations_filters_narrow(
    gql: GraphQL,
    admin: Persona,
    assorted: dict[str, Destination],
    filters: dict[str, Any],
    names: list[str],
) -> None:
    body = gql(DESTINATIONS, {"filters": filters}, persona=admin)

    assert _ids(body) == [str(assorted[name].pk) for name in names]


def test_destinations_filter_by_account(
    gql: GraphQL,
    outsider: Persona,
    account: Account,
    other_account: Account,
    assorted: dict[str, Destination],
) -> None:
    foreign = make_destination(other_account)
    # The outsider also joins Acme: now a filter picks between two visible accounts.
    add_member(account, outsider.user, "NORMAL_USER")  # type: ignore[arg-type]

    mine = gql(DESTINATIONS, {"filters": {"accountId": str(account.pk)}}, persona=outsider)
    theirs = gql(DESTINATIONS, {"filters": {"accountId": str(other_account.pk)}}, persona=outsider)

    assert _ids(mine) == [str(d.pk) for d in assorted.values()]
    assert _ids(theirs) == [str(foreign.pk)]


@pytest.mark.parametrize("account_id", ["foreign", "missing", "malformed"])
def test_destinations_filter_on_foreign_account_returns_nothing(
    gql: GraphQL,
    admin: Persona,
    other_account: Account,
    assorted: dict[str, Destination],
    account_id: str,
) -> None:
    make_destination(other_account)
    value = {
        "foreign": str(other_account.pk),
        "missing": "00000000-0000-0000-0000-000000000000",
        "malformed": "not-a-uuid",
    }[account_id]

    body = gql(DESTINATIONS, {"filters": {"accountId": value}}, persona=admin)

    assert body == {"data": {"destinations": []}}


# --- Query counts ----------------------------------------------------------------------------


def test_destinations_query_count_does_not_grow_with_rows(
    gql: GraphQL, admin: Persona, account: Account, django_assert_num_queries: Any
) -> None:
    query = "{ destinations { id url signingSecret account { id name members { role } } } }"
    for _ in range(5):
        make_destination(account)
    gql(query, persona=admin)  # warms the token's last_used_at

    # token, destinations + accounts, members, admin account ids
    with django_assert_num_queries(4):
        small = gql(query, persona=admin)
    for _ in range(45):
        make_destination(account)
    with django_assert_num_queries(4):
        large = gql(query, persona=admin)

    assert len(small["data"]["destinations"]) == 5
    assert len(large["data"]["destinations"]) == 50
    assert {d["signingSecret"] is not None for d in large["data"]["destinations"]} == {True}


def test_signing_secret_follows_a_role_change_on_the_next_request(
    gql: GraphQL, normal_user: Persona, destination: Destination
) -> None:
    query = "{ destinations { signingSecret } }"
    before = gql(query, persona=normal_user)

    Membership.objects.filter(user=normal_user.user).update(role="ADMIN")
    after = gql(query, persona=normal_user)

    assert before == {"data": {"destinations": [{"signingSecret": None}]}}
    assert after == {"data": {"destinations": [{"signingSecret": destination.signing_secret}]}}

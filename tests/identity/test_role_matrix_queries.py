"""Every identity query, asked by every persona, with the exact answer each one gets.

The target is the `account` fixture ("Acme"): admin is its ADMIN, normal_user its NORMAL_USER,
outsider administers another account ("Other") only.
"""

from typing import Any

import pytest

from identity.models import Account, Membership
from tests.conftest import GraphQL, Persona, error_codes

PERSONAS = ["admin", "normal_user", "outsider", "anonymous"]

ME = "{ me { id email fullName } }"
USERS = "{ users { id email } }"
ACCOUNTS = "{ accounts { id name } }"
ACCOUNT = "query ($id: ID!) { account(id: $id) { id name } }"
MEMBERS = "query ($accountId: ID!) { members(accountId: $accountId) { id role user { email } } }"


def _user(persona: Persona) -> dict[str, str]:
    assert persona.user is not None
    return {"id": str(persona.user.pk), "email": persona.user.email}


def _account(account: Account) -> dict[str, str]:
    return {"id": str(account.pk), "name": account.name}


def _member(membership: Membership) -> dict[str, Any]:
    return {
        "id": str(membership.pk),
        "role": membership.role,
        "user": {"email": membership.user.email},
    }


def assert_unauthenticated(body: dict[str, Any], data: dict[str, Any] | None) -> None:
    assert body["data"] == data
    assert error_codes(body) == ["unauthenticated"]
    assert [error["message"] for error in body["errors"]] == ["Authentication required."]


@pytest.mark.parametrize("persona", PERSONAS)
def test_me_role_matrix(gql: GraphQL, personas: dict[str, Persona], persona: str) -> None:
    expected = {
        name: {"id": str(p.user.pk), "email": p.user.email, "fullName": p.user.full_name}
        for name, p in personas.items()
        if p.user is not None
    }

    body = gql(ME, persona=personas[persona])

    if persona == "anonymous":
        assert_unauthenticated(body, None)
    else:
        assert body == {"data": {"me": expected[persona]}}


@pytest.mark.parametrize("persona", PERSONAS)
def test_users_role_matrix(gql: GraphQL, personas: dict[str, Persona], persona: str) -> None:
    expected = {
        # Admins see the members of the accounts they administer, themselves included.
        "admin": [_user(personas["admin"]), _user(personas["normal_user"])],
        "normal_user": [_user(personas["normal_user"])],
        # The outsider administers "Other", where they are alone.
        "outsider": [_user(personas["outsider"])],
    }

    body = gql(USERS, persona=personas[persona])

    if persona == "anonymous":
        assert_unauthenticated(body, None)
    else:
        assert body == {"data": {"users": expected[persona]}}


@pytest.mark.parametrize("persona", PERSONAS)
def test_accounts_role_matrix(
    gql: GraphQL, personas: dict[str, Persona], account: Account, persona: str
) -> None:
    other = Account.objects.get(name="Other")
    expected = {
        "admin": [_account(account)],
        "normal_user": [_account(account)],
        "outsider": [_account(other)],
    }

    body = gql(ACCOUNTS, persona=personas[persona])

    if persona == "anonymous":
        assert_unauthenticated(body, None)
    else:
        assert body == {"data": {"accounts": expected[persona]}}


@pytest.mark.parametrize("persona", PERSONAS)
def test_account_role_matrix(
    gql: GraphQL, personas: dict[str, Persona], account: Account, persona: str
) -> None:
    expected = {
        "admin": _account(account),
        "normal_user": _account(account),
        # A foreign account reads as missing.
        "outsider": None,
    }

    body = gql(ACCOUNT, {"id": str(account.pk)}, persona=personas[persona])

    if persona == "anonymous":
        assert_unauthenticated(body, {"account": None})
    else:
        assert body == {"data": {"account": expected[persona]}}


@pytest.mark.parametrize("persona", PERSONAS)
def test_members_role_matrix(
    gql: GraphQL, personas: dict[str, Persona], account: Account, persona: str
) -> None:
    acme_members = [_member(m) for m in Membership.objects.filter(account=account)]
    assert [m["user"]["email"] for m in acme_members] == [
        "admin@example.com",
        "normal@example.com",
    ]
    expected = {
        "admin": acme_members,
        "normal_user": acme_members,
        # A foreign account has no members the outsider may see.
        "outsider": [],
    }

    body = gql(MEMBERS, {"accountId": str(account.pk)}, persona=personas[persona])

    if persona == "anonymous":
        assert_unauthenticated(body, None)
    else:
        assert body == {"data": {"members": expected[persona]}}

"""Every identity list costs a fixed number of queries, however many rows it returns."""

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from identity.models import Account
from tests.conftest import GraphQL, Persona
from tests.factories import add_member, make_account, make_user

ACCOUNTS = "{ accounts { id name members { id role user { email } } } }"
MEMBERS = "query ($id: ID!) { members(accountId: $id) { id role user { email } account { name } } }"
ACCOUNT = "query ($id: ID!) { account(id: $id) { name members { role user { email } } } }"
USERS = "{ users { id email } }"


def _grow(admin: Persona, account: Account, rows: int) -> None:
    """Give Acme `rows` members in all and the admin `rows` accounts in all."""
    assert admin.user is not None
    for _ in range(rows - account.memberships.count()):
        add_member(account, make_user())
    for _ in range(rows - Account.objects.filter(memberships__user=admin.user).count()):
        add_member(make_account(admin=admin.user)[0], make_user())


def _count(gql: GraphQL, admin: Persona, query: str, variables: dict[str, Any]) -> int:
    with CaptureQueriesContext(connection) as captured:
        body = gql(query, variables, persona=admin)
    assert "errors" not in body, body
    return len(captured.captured_queries)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # token lookup, accounts, their members with users
        (ACCOUNTS, 3),
        # token lookup, members with user and account joined
        (MEMBERS, 2),
        # token lookup, the account, its members with users
        (ACCOUNT, 3),
        # token lookup, users
        (USERS, 2),
    ],
)
def test_identity_lists_cost_the_same_for_5_and_50_rows(
    gql: GraphQL, admin: Persona, account: Account, query: str, expected: int
) -> None:
    variables = {"id": str(account.pk)}
    # The first request with a token also records when it was used; keep that out of the count.
    gql("{ me { id } }", persona=admin)

    _grow(admin, account, 5)
    small = _count(gql, admin, query, variables)
    _grow(admin, account, 50)
    large = _count(gql, admin, query, variables)

    assert (small, large) == (expected, expected)


def test_large_lists_are_complete(gql: GraphQL, admin: Persona, account: Account) -> None:
    _grow(admin, account, 50)

    accounts = gql(ACCOUNTS, persona=admin)["data"]["accounts"]
    members = gql(MEMBERS, {"id": str(account.pk)}, persona=admin)["data"]["members"]

    assert len(accounts) == 50
    assert [len(a["members"]) for a in accounts] == [50] + [2] * 49
    assert len(members) == 50
    assert {m["account"]["name"] for m in members} == {"Acme"}


INVITATIONS = (
    "query ($id: ID!) { invitations(accountId: $id) { id email role expiresAt account { name } } }"
)
USERS_WITH_EMAIL_STATE = "{ users { id email emailVerified pendingEmail } }"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # token lookup, invitations with their account joined
        (INVITATIONS, 2),
        # token lookup, users (the email state is read from the same rows)
        (USERS_WITH_EMAIL_STATE, 2),
    ],
)
def test_invitations_and_email_state_cost_the_same_for_5_and_50_rows(
    gql: GraphQL, admin: Persona, account: Account, query: str, expected: int
) -> None:
    variables = {"id": str(account.pk)} if "$id" in query else {}
    gql("{ me { id } }", persona=admin)
    counts = []
    for rows in (5, 50):
        for n in range(account.invitations.count(), rows):
            account.invitations.create(email=f"invited{n}@example.com", role="NORMAL_USER")
        _grow(admin, account, rows)
        counts.append(_count(gql, admin, query, variables))

    assert counts == [expected, expected]
    assert account.invitations.count() == 50

"""An id the caller may not see answers exactly like an id that does not exist (same code, same
message), and so does an id that cannot exist at all: nobody learns what is there."""

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from identity.models import Account, Membership, User
from tests.conftest import GraphQL, Persona
from tests.identity.helpers import OPERATION_INFO, db_state, not_found

Variables = Callable[[str, Account], dict[str, Any]]

# Each mutation addressed by an account id: its text, and its variables for an id and Acme.
BY_ACCOUNT_ID: dict[str, tuple[str, Variables]] = {
    "accountUpdate": (
        'mutation ($id: ID!) { accountUpdate(id: $id, input: {name: "X"}) { __typename '
        + OPERATION_INFO
        + " } }",
        lambda id, acme: {"id": id},
    ),
    "accountDelete": (
        "mutation ($id: ID!) { accountDelete(id: $id) { __typename " + OPERATION_INFO + " } }",
        lambda id, acme: {"id": id},
    ),
    "accountRotateSecret": (
        "mutation ($id: ID!) { accountRotateSecret(id: $id) { __typename "
        + OPERATION_INFO
        + " } }",
        lambda id, acme: {"id": id},
    ),
    "memberInvite": (
        'mutation ($id: ID!) { memberInvite(input: {accountId: $id, email: "x@example.com", '
        "role: ADMIN}) { __typename " + OPERATION_INFO + " } }",
        lambda id, acme: {"id": id},
    ),
    "memberAdd": (
        "mutation ($id: ID!, $userId: ID!) { memberAdd(input: {accountId: $id, userId: $userId, "
        "role: ADMIN}) { __typename " + OPERATION_INFO + " } }",
        lambda id, acme: {"id": id, "userId": str(User.objects.get(email="normal@example.com").pk)},
    ),
}
BY_MEMBERSHIP_ID: dict[str, tuple[str, Variables]] = {
    "memberUpdate": (
        "mutation ($id: ID!) { memberUpdate(id: $id, input: {role: NORMAL_USER}) { __typename "
        + OPERATION_INFO
        + " } }",
        lambda id, acme: {"id": id},
    ),
    "memberRemove": (
        "mutation ($id: ID!) { memberRemove(id: $id) { __typename " + OPERATION_INFO + " } }",
        lambda id, acme: {"id": id},
    ),
}
BY_USER_ID: dict[str, tuple[str, Variables]] = {
    "userUpdate": (
        'mutation ($id: ID!) { userUpdate(id: $id, input: {fullName: "X"}) { __typename '
        + OPERATION_INFO
        + " } }",
        lambda id, acme: {"id": id},
    ),
    "memberAdd": (
        "mutation ($accountId: ID!, $id: ID!) { memberAdd(input: {accountId: $accountId, "
        "userId: $id, role: ADMIN}) { __typename " + OPERATION_INFO + " } }",
        lambda id, acme: {"accountId": str(acme.pk), "id": id},
    ),
}
# Integer ids that cannot name a row: not a number, not positive, past any database integer.
MALFORMED_INT_IDS = ["not-a-number", "0", "-1", "1.5", "99999999999999999999999"]


def _answers(
    gql: GraphQL,
    caller: Persona,
    acme: Account,
    operation: tuple[str, Variables],
    field: str,
    ids: dict[str, str],
) -> dict[str, Any]:
    query, variables = operation
    return {
        kind: gql(query, variables(id, acme), persona=caller)["data"][field]
        for kind, id in ids.items()
    }


@pytest.mark.parametrize("field", BY_ACCOUNT_ID)
def test_foreign_account_id_answers_like_a_missing_one(
    gql: GraphQL, personas: dict[str, Persona], account: Account, field: str
) -> None:
    ids = {
        "foreign": str(Account.objects.get(name="Other").pk),
        "missing": str(uuid.uuid4()),
        "malformed": "not-a-uuid",
    }
    before = db_state()

    answers = _answers(gql, personas["admin"], account, BY_ACCOUNT_ID[field], field, ids)

    assert answers == dict.fromkeys(ids, not_found("Account"))
    assert db_state() == before


@pytest.mark.parametrize("field", BY_MEMBERSHIP_ID)
def test_foreign_membership_id_answers_like_a_missing_one(
    gql: GraphQL, personas: dict[str, Persona], account: Account, field: str
) -> None:
    foreign = Membership.objects.get(user=personas["outsider"].user)
    ids = {
        "foreign": str(foreign.pk),
        "missing": str(Membership.objects.order_by("-pk")[0].pk + 1000),
        **{f"malformed {id}": id for id in MALFORMED_INT_IDS},
    }
    before = db_state()

    answers = _answers(gql, personas["admin"], account, BY_MEMBERSHIP_ID[field], field, ids)

    assert answers == dict.fromkeys(ids, not_found("Member"))
    assert db_state() == before


@pytest.mark.parametrize("field", BY_USER_ID)
def test_foreign_user_id_answers_like_a_missing_one(
    gql: GraphQL, personas: dict[str, Persona], account: Account, field: str
) -> None:
    outsider = personas["outsider"].user
    assert outsider is not None
    ids = {
        "foreign": str(outsider.pk),
        "missing": str(outsider.pk + 1000),
        **{f"malformed {id}": id for id in MALFORMED_INT_IDS},
    }
    before = db_state()

    answers = _answers(gql, personas["admin"], account, BY_USER_ID[field], field, ids)

    assert answers == dict.fromkeys(ids, not_found("User"))
    assert db_state() == before


@pytest.mark.parametrize("persona", ["admin", "normal_user"])
def test_foreign_account_reads_like_a_missing_one(
    gql: GraphQL, personas: dict[str, Persona], persona: str
) -> None:
    query = "query ($id: ID!) { account(id: $id) { id } members(accountId: $id) { id } }"
    ids = [str(Account.objects.get(name="Other").pk), str(uuid.uuid4()), "not-a-uuid"]

    answers = [gql(query, {"id": id}, persona=personas[persona]) for id in ids]

    assert answers == [{"data": {"account": None, "members": []}}] * 3

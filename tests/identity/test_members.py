"""Members: invitations (see also test_invitations.py), adding, role changes, leaving, and the
last-admin rule."""

from typing import Any

import pytest

from identity.models import Account, Invitation, Membership, User
from tests.conftest import GraphQL, Persona
from tests.factories import PASSWORD, add_member, make_account, make_user
from tests.identity.helpers import OPERATION_INFO, db_state, invalid, not_found

MEMBER_INVITE = (
    "mutation ($input: MemberInviteInput!) { memberInvite(input: $input) { __typename "
    "... on Invitation { email role } ... on Member { role user { email } account { name } } "
    + OPERATION_INFO
    + " } }"
)
MEMBER_ADD = (
    "mutation ($input: MemberAddInput!) { memberAdd(input: $input) { __typename "
    "... on Member { role user { email } } " + OPERATION_INFO + " } }"
)
MEMBER_UPDATE = (
    "mutation ($id: ID!, $role: Role!) { memberUpdate(id: $id, input: {role: $role}) { "
    "__typename ... on Member { role } " + OPERATION_INFO + " } }"
)
MEMBER_REMOVE = (
    "mutation ($id: ID!) { memberRemove(id: $id) { __typename ... on Deleted { id } "
    + OPERATION_INFO
    + " } }"
)
SIGNUP = (
    "mutation ($input: SignupInput!) { signup(input: $input) { __typename "
    + OPERATION_INFO
    + " } }"
)

LAST_ADMIN = invalid("last_admin", "An account must keep at least one admin.")


def _invite(
    gql: GraphQL, admin: Persona, account: Account, email: str, role: str = "NORMAL_USER"
) -> dict[str, Any]:
    variables = {"input": {"accountId": str(account.pk), "email": email, "role": role}}
    payload: dict[str, Any] = gql(MEMBER_INVITE, variables, persona=admin)["data"]["memberInvite"]
    return payload


def _membership(persona: Persona) -> Membership:
    return Membership.objects.get(user=persona.user, account__name="Acme")


def _update_role(gql: GraphQL, caller: Persona, membership: Membership, role: str) -> Any:
    body = gql(MEMBER_UPDATE, {"id": str(membership.pk), "role": role}, persona=caller)
    return body["data"]["memberUpdate"]


def _remove(gql: GraphQL, caller: Persona, membership: Membership) -> Any:
    return gql(MEMBER_REMOVE, {"id": str(membership.pk)}, persona=caller)["data"]["memberRemove"]


# --- memberInvite -----------------------------------------------------------------------------


def test_inviting_an_existing_user_leaves_them_out_until_they_accept(
    gql: GraphQL, admin: Persona, account: Account, outsider: Persona
) -> None:
    payload = _invite(gql, admin, account, "Outsider@Example.com", role="ADMIN")

    assert payload == {"__typename": "Invitation", "email": "outsider@example.com", "role": "ADMIN"}
    assert not Membership.objects.filter(user=outsider.user, account=account).exists()
    assert list(Invitation.objects.values_list("email", "role")) == [
        ("outsider@example.com", "ADMIN")
    ]


def test_signing_up_with_an_invited_email_does_not_join(
    gql: GraphQL, admin: Persona, account: Account
) -> None:
    invited = _invite(gql, admin, account, "Later@Example.com", role="ADMIN")
    assert invited == {"__typename": "Invitation", "email": "later@example.com", "role": "ADMIN"}

    signup = gql(
        SIGNUP,
        {"input": {"email": "later@example.com", "password": PASSWORD, "accountName": "Mine"}},
    )

    assert signup["data"]["signup"]["__typename"] == "AuthPayload"
    user = User.objects.get(email="later@example.com")
    assert list(Membership.objects.filter(user=user).values_list("account__name", "role")) == [
        ("Mine", "ADMIN")
    ]
    assert Invitation.objects.count() == 1


def test_inviting_the_same_email_twice_refreshes_the_invitation(
    gql: GraphQL, admin: Persona, account: Account
) -> None:
    _invite(gql, admin, account, "later@example.com")
    first = Invitation.objects.get()

    payload = _invite(gql, admin, account, "LATER@example.com", role="ADMIN")

    assert payload == {"__typename": "Invitation", "email": "later@example.com", "role": "ADMIN"}
    second = Invitation.objects.get()
    assert (second.pk, second.role) == (first.pk, "ADMIN")
    assert second.secret_hash != first.secret_hash
    assert second.expires_at > first.expires_at


def test_inviting_a_member_is_refused(
    gql: GraphQL, admin: Persona, normal_user: Persona, account: Account
) -> None:
    before = db_state()

    payload = _invite(gql, admin, account, "normal@example.com", role="ADMIN")

    assert payload == invalid("already_member", "The user is already a member.")
    assert db_state() == before


def test_inviting_a_malformed_email_is_refused(
    gql: GraphQL, admin: Persona, account: Account
) -> None:
    before = db_state()

    payload = _invite(gql, admin, account, "not an email")

    assert payload == invalid("invalid", "Enter a valid email address.", "email")
    assert db_state() == before


# --- memberAdd --------------------------------------------------------------------------------


def test_admin_cannot_add_a_user_they_cannot_see(
    gql: GraphQL, admin: Persona, account: Account, outsider: Persona
) -> None:
    assert outsider.user is not None
    before = db_state()
    variables = {
        "input": {"accountId": str(account.pk), "userId": str(outsider.user.pk), "role": "ADMIN"}
    }

    payload = gql(MEMBER_ADD, variables, persona=admin)["data"]["memberAdd"]

    # Not knowing whether an id is a user is the point: it reads as missing.
    assert payload == not_found("User")
    assert db_state() == before


def test_adding_a_member_twice_is_refused(
    gql: GraphQL, admin: Persona, normal_user: Persona, account: Account
) -> None:
    assert normal_user.user is not None
    before = db_state()
    variables = {
        "input": {"accountId": str(account.pk), "userId": str(normal_user.user.pk), "role": "ADMIN"}
    }

    payload = gql(MEMBER_ADD, variables, persona=admin)["data"]["memberAdd"]

    assert payload == invalid("already_member", "The user is already a member.")
    assert db_state() == before


# --- memberUpdate / memberRemove and the last admin -------------------------------------------


def test_last_admin_cannot_be_demoted(gql: GraphQL, admin: Persona, normal_user: Persona) -> None:
    before = db_state()

    payload = _update_role(gql, admin, _membership(admin), "NORMAL_USER")

    assert payload == LAST_ADMIN
    assert db_state() == before


def test_last_admin_cannot_be_removed(gql: GraphQL, admin: Persona, normal_user: Persona) -> None:
    before = db_state()

    payload = _remove(gql, admin, _membership(admin))

    assert payload == LAST_ADMIN
    assert db_state() == before


def test_last_admin_may_keep_the_admin_role(gql: GraphQL, admin: Persona) -> None:
    assert _update_role(gql, admin, _membership(admin), "ADMIN") == {
        "__typename": "Member",
        "role": "ADMIN",
    }


def test_an_admin_can_step_down_when_another_admin_remains(
    gql: GraphQL, admin: Persona, normal_user: Persona
) -> None:
    assert _update_role(gql, admin, _membership(normal_user), "ADMIN")["role"] == "ADMIN"

    payload = _update_role(gql, admin, _membership(admin), "NORMAL_USER")

    assert payload == {"__typename": "Member", "role": "NORMAL_USER"}
    assert _membership(admin).role == "NORMAL_USER"
    # Now the other one is the last admin.
    assert _update_role(gql, normal_user, _membership(normal_user), "NORMAL_USER") == LAST_ADMIN


def test_an_admin_can_leave_when_another_admin_remains(
    gql: GraphQL, admin: Persona, normal_user: Persona, account: Account
) -> None:
    second_admin = add_member(account, make_user("second@example.com"), "ADMIN")
    membership = _membership(admin)

    payload = _remove(gql, admin, membership)

    assert payload == {"__typename": "Deleted", "id": str(membership.pk)}
    assert list(Membership.objects.filter(account=account).values_list("pk", flat=True)) == [
        _membership(normal_user).pk,
        second_admin.pk,
    ]


def test_normal_user_can_leave_an_account(
    gql: GraphQL, admin: Persona, normal_user: Persona, account: Account
) -> None:
    membership = _membership(normal_user)

    payload = _remove(gql, normal_user, membership)

    assert payload == {"__typename": "Deleted", "id": str(membership.pk)}
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert gql("{ accounts { name } }", persona=normal_user) == {"data": {"accounts": []}}


def test_member_of_two_accounts_is_only_changed_in_the_one_addressed(
    gql: GraphQL, admin: Persona, normal_user: Persona
) -> None:
    assert normal_user.user is not None
    other, _ = make_account(admin=admin.user, name="Second")
    elsewhere = add_member(other, normal_user.user)

    _update_role(gql, admin, _membership(normal_user), "ADMIN")

    elsewhere.refresh_from_db()
    assert (_membership(normal_user).role, elsewhere.role) == ("ADMIN", "NORMAL_USER")


@pytest.mark.parametrize("role", ["ADMIN", "NORMAL_USER"])
def test_members_query_lists_roles(
    gql: GraphQL, admin: Persona, normal_user: Persona, account: Account, role: str
) -> None:
    _update_role(gql, admin, _membership(normal_user), role)

    body = gql(
        "query ($id: ID!) { members(accountId: $id) { role user { email } } }",
        {"id": str(account.pk)},
        persona=normal_user,
    )

    assert body == {
        "data": {
            "members": [
                {"role": "ADMIN", "user": {"email": "admin@example.com"}},
                {"role": role, "user": {"email": "normal@example.com"}},
            ]
        }
    }

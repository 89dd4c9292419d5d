"""Whose profile an admin may edit (only users who are exclusively theirs), and member changes
that lose a race with a removal."""

from typing import Any

import pytest

from identity import members
from identity.auth import token_issue
from identity.models import Account, Membership
from tests.conftest import GraphQL, Persona
from tests.factories import add_member, make_account, make_user
from tests.identity.helpers import OPERATION_INFO, PERMISSION_DENIED, db_state, not_found

USER_UPDATE = (
    "mutation ($id: ID!, $input: UserUpdateInput!) { userUpdate(id: $id, input: $input) { "
    "__typename ... on User { email fullName } " + OPERATION_INFO + " } }"
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


def _rename(gql: GraphQL, caller: Persona, target: Persona, name: str) -> dict[str, Any]:
    assert target.user is not None
    body = gql(
        USER_UPDATE, {"id": str(target.user.pk), "input": {"fullName": name}}, persona=caller
    )
    payload: dict[str, Any] = body["data"]["userUpdate"]
    return payload


# --- userUpdate by an admin ---------------------------------------------------------------------


@pytest.mark.parametrize("role_elsewhere", ["NORMAL_USER", "ADMIN"])
def test_admin_cannot_rename_a_user_who_also_belongs_to_an_account_they_do_not_administer(
    gql: GraphQL, admin: Persona, normal_user: Persona, outsider: Persona, role_elsewhere: str
) -> None:
    assert normal_user.user is not None
    add_member(Account.objects.get(name="Other"), normal_user.user, role_elsewhere)
    before = db_state()

    assert _rename(gql, admin, normal_user, "Renamed") == PERMISSION_DENIED

    assert db_state() == before


def test_admin_who_is_only_a_normal_user_in_the_users_other_account_cannot_rename(
    gql: GraphQL, admin: Persona, normal_user: Persona
) -> None:
    assert admin.user is not None
    assert normal_user.user is not None
    shared, _ = make_account(name="Shared")
    add_member(shared, admin.user)  # NORMAL_USER there
    add_member(shared, normal_user.user)
    before = db_state()

    assert _rename(gql, admin, normal_user, "Renamed") == PERMISSION_DENIED

    assert db_state() == before


def test_admin_can_rename_a_user_whose_every_account_they_administer(
    gql: GraphQL, admin: Persona, normal_user: Persona
) -> None:
    assert admin.user is not None
    assert normal_user.user is not None
    second, _ = make_account(admin=admin.user, name="Second")
    add_member(second, normal_user.user)

    payload = _rename(gql, admin, normal_user, " Nora Renamed ")

    assert payload == {
        "__typename": "User",
        "email": "normal@example.com",
        "fullName": "Nora Renamed",
    }


def test_superuser_may_rename_anyone(gql: GraphQL, normal_user: Persona, outsider: Persona) -> None:
    assert normal_user.user is not None
    add_member(Account.objects.get(name="Other"), normal_user.user)
    root = make_user("root@example.com", is_superuser=True, is_staff=True)
    superuser = Persona("root", root, token_issue(user=root))

    assert _rename(gql, superuser, normal_user, "By Root")["fullName"] == "By Root"


# --- memberUpdate / memberRemove racing a removal -----------------------------------------------


@pytest.fixture
def removed_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The membership is deleted (by a concurrent memberRemove) right after it was looked up."""
    lookup = members._membership_for_change

    def lookup_then_lose_the_race(actor: Any, membership_id: int | str) -> Membership:
        membership = lookup(actor, membership_id)
        Membership.objects.filter(pk=membership.pk).delete()
        return membership

    monkeypatch.setattr(members, "_membership_for_change", lookup_then_lose_the_race)


@pytest.mark.usefixtures("removed_meanwhile")
def test_member_update_racing_a_removal_answers_not_found(
    gql: GraphQL, admin: Persona, normal_user: Persona
) -> None:
    membership = Membership.objects.get(user=normal_user.user)

    body = gql(MEMBER_UPDATE, {"id": str(membership.pk), "role": "ADMIN"}, persona=admin)

    assert body == {"data": {"memberUpdate": not_found("Member")}}


@pytest.mark.usefixtures("removed_meanwhile")
def test_member_remove_racing_a_removal_answers_not_found(
    gql: GraphQL, admin: Persona, normal_user: Persona
) -> None:
    membership = Membership.objects.get(user=normal_user.user)

    body = gql(MEMBER_REMOVE, {"id": str(membership.pk)}, persona=admin)

    assert body == {"data": {"memberRemove": not_found("Member")}}

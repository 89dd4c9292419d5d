"""Every identity mutation, called by every persona: the exact payload each one gets, what an
allowed call wrote, and that a refused call wrote nothing.

The target is the `account` fixture ("Acme"): admin is its ADMIN, normal_user its NORMAL_USER,
outsider administers another account ("Other") only, so Acme is foreign to them.
"""

from typing import Any

import pytest

from identity import secrets, selectors
from identity.auth import token_user
from identity.models import Account, AuthToken, Invitation, Membership, User
from tests.conftest import GraphQL, Persona
from tests.factories import PASSWORD, add_member, make_account, make_user
from tests.identity.helpers import (
    OPERATION_INFO,
    PERMISSION_DENIED,
    UNAUTHENTICATED,
    db_state,
    not_found,
)

PERSONAS = ["admin", "normal_user", "outsider", "anonymous"]
SIGNED_IN = ["admin", "normal_user", "outsider"]
# Who is refused an ADMIN-only action on Acme, and how.
NOT_ACME_ADMIN = [
    ("normal_user", PERMISSION_DENIED),
    ("outsider", not_found("Account")),
    ("anonymous", UNAUTHENTICATED),
]
# The same for actions addressed by a membership id.
NOT_ACME_ADMIN_BY_MEMBER = [
    ("normal_user", PERMISSION_DENIED),
    ("outsider", not_found("Member")),
    ("anonymous", UNAUTHENTICATED),
]

SIGNUP = (
    "mutation ($input: SignupInput!) { signup(input: $input) { __typename "
    "... on AuthPayload { token user { email } } " + OPERATION_INFO + " } }"
)
LOGIN = (
    "mutation ($input: LoginInput!) { login(input: $input) { __typename "
    "... on AuthPayload { token user { email } } " + OPERATION_INFO + " } }"
)
LOGOUT = "mutation { logout { __typename ... on Done { ok } " + OPERATION_INFO + " } }"
USER_UPDATE = (
    "mutation ($id: ID!, $input: UserUpdateInput!) { userUpdate(id: $id, input: $input) { "
    "__typename ... on User { id email fullName } " + OPERATION_INFO + " } }"
)
ACCOUNT_CREATE = (
    "mutation ($input: AccountCreateInput!) { accountCreate(input: $input) { __typename "
    "... on AccountSecret { appSecretToken account { name website appSecretPrefix "
    "members { role user { email } } } } " + OPERATION_INFO + " } }"
)
ACCOUNT_UPDATE = (
    "mutation ($id: ID!, $input: AccountUpdateInput!) { accountUpdate(id: $id, input: $input) { "
    "__typename ... on Account { id name website } " + OPERATION_INFO + " } }"
)
ACCOUNT_DELETE = (
    "mutation ($id: ID!) { accountDelete(id: $id) { __typename ... on Deleted { id } "
    + OPERATION_INFO
    + " } }"
)
ACCOUNT_ROTATE_SECRET = (
    "mutation ($id: ID!) { accountRotateSecret(id: $id) { __typename "
    "... on AccountSecret { appSecretToken account { id appSecretPrefix } } "
    + OPERATION_INFO
    + " } }"
)
MEMBER_INVITE = (
    "mutation ($input: MemberInviteInput!) { memberInvite(input: $input) { __typename "
    "... on Invitation { email role account { name } } "
    "... on Member { role user { email } account { name } } " + OPERATION_INFO + " } }"
)
MEMBER_ADD = (
    "mutation ($input: MemberAddInput!) { memberAdd(input: $input) { __typename "
    "... on Member { role user { email } account { name } } " + OPERATION_INFO + " } }"
)
MEMBER_UPDATE = (
    "mutation ($id: ID!, $input: MemberUpdateInput!) { memberUpdate(id: $id, input: $input) { "
    "__typename ... on Member { id role user { email } } " + OPERATION_INFO + " } }"
)
MEMBER_REMOVE = (
    "mutation ($id: ID!) { memberRemove(id: $id) { __typename ... on Deleted { id } "
    + OPERATION_INFO
    + " } }"
)


@pytest.fixture
def friend(admin: Persona) -> User:
    """A member of a second account the admin administers: a user the admin may add to Acme."""
    assert admin.user is not None
    user = make_user("friend@example.com")
    second, _ = make_account(admin=admin.user, name="Second")
    add_member(second, user)
    return user


@pytest.fixture
def colleague_membership(account: Account) -> Membership:
    """A third member of Acme, so that removing someone is not normal_user leaving."""
    return add_member(account, make_user("colleague@example.com"))


def _user(persona: Persona) -> User:
    assert persona.user is not None
    return persona.user


def _payload(body: dict[str, Any], field: str) -> Any:
    assert "errors" not in body, body
    return body["data"][field]


# --- signup, login, logout --------------------------------------------------------------------


@pytest.mark.parametrize("persona", PERSONAS)
def test_anyone_can_sign_up(gql: GraphQL, personas: dict[str, Persona], persona: str) -> None:
    variables = {
        "input": {"email": "New@Example.com", "password": PASSWORD, "accountName": "Newco"}
    }

    payload = _payload(gql(SIGNUP, variables, persona=personas[persona]), "signup")

    user = User.objects.get(email="new@example.com")
    assert payload == {
        "__typename": "AuthPayload",
        "token": payload["token"],
        "user": {"email": "new@example.com"},
    }
    assert token_user(payload["token"]) == user
    assert list(Membership.objects.filter(user=user).values_list("account__name", "role")) == [
        ("Newco", "ADMIN")
    ]


@pytest.mark.parametrize("persona", PERSONAS)
def test_anyone_can_log_in(gql: GraphQL, personas: dict[str, Persona], persona: str) -> None:
    variables = {"input": {"email": "normal@example.com", "password": PASSWORD}}

    payload = _payload(gql(LOGIN, variables, persona=personas[persona]), "login")

    assert payload == {
        "__typename": "AuthPayload",
        "token": payload["token"],
        "user": {"email": "normal@example.com"},
    }
    assert token_user(payload["token"]) == _user(personas["normal_user"])


@pytest.mark.parametrize("persona", SIGNED_IN)
def test_signed_in_user_can_log_out(
    gql: GraphQL, personas: dict[str, Persona], persona: str
) -> None:
    caller = personas[persona]

    payload = _payload(gql(LOGOUT, persona=caller), "logout")

    assert payload == {"__typename": "Done", "ok": True}
    assert token_user(caller.token) is None
    assert not AuthToken.objects.filter(user=caller.user).exists()


def test_anonymous_cannot_log_out(gql: GraphQL, personas: dict[str, Persona]) -> None:
    before = db_state()

    payload = _payload(gql(LOGOUT, persona=personas["anonymous"]), "logout")

    assert payload == UNAUTHENTICATED
    assert db_state() == before


# --- userUpdate -------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["admin", "normal_user"])
def test_self_and_account_admin_can_rename_user(
    gql: GraphQL, personas: dict[str, Persona], persona: str
) -> None:
    target = _user(personas["normal_user"])
    variables = {"id": str(target.pk), "input": {"fullName": "Nora Renamed"}}

    payload = _payload(gql(USER_UPDATE, variables, persona=personas[persona]), "userUpdate")

    assert payload == {
        "__typename": "User",
        "id": str(target.pk),
        "email": "normal@example.com",
        "fullName": "Nora Renamed",
    }
    target.refresh_from_db()
    assert target.full_name == "Nora Renamed"


@pytest.mark.parametrize(
    ("persona", "expected"), [("outsider", not_found("User")), ("anonymous", UNAUTHENTICATED)]
)
def test_stranger_cannot_update_user(
    gql: GraphQL, personas: dict[str, Persona], persona: str, expected: dict[str, Any]
) -> None:
    target = _user(personas["normal_user"])
    before = db_state()

    body = gql(
        USER_UPDATE,
        {"id": str(target.pk), "input": {"fullName": "Hacked"}},
        persona=personas[persona],
    )

    assert _payload(body, "userUpdate") == expected
    assert db_state() == before


# --- accounts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", SIGNED_IN)
def test_signed_in_user_can_create_account(
    gql: GraphQL, personas: dict[str, Persona], persona: str
) -> None:
    caller = _user(personas[persona])
    variables = {"input": {"name": "Newco", "website": "https://newco.example"}}

    payload = _payload(gql(ACCOUNT_CREATE, variables, persona=personas[persona]), "accountCreate")

    token = payload["appSecretToken"]
    assert payload == {
        "__typename": "AccountSecret",
        "appSecretToken": token,
        "account": {
            "name": "Newco",
            "website": "https://newco.example",
            "appSecretPrefix": token[:12],
            "members": [{"role": "ADMIN", "user": {"email": caller.email}}],
        },
    }
    account = Account.objects.get(name="Newco")
    assert selectors.account_for_app_secret(token) == account
    assert (account.created_by, account.updated_by) == (caller, caller)


def test_anonymous_cannot_create_account(gql: GraphQL, personas: dict[str, Persona]) -> None:
    before = db_state()

    body = gql(ACCOUNT_CREATE, {"input": {"name": "Newco"}}, persona=personas["anonymous"])

    assert _payload(body, "accountCreate") == UNAUTHENTICATED
    assert db_state() == before


def test_admin_can_update_account(
    gql: GraphQL, personas: dict[str, Persona], account: Account
) -> None:
    variables = {"id": str(account.pk), "input": {"name": "Acme 2", "website": "https://a.example"}}

    payload = _payload(gql(ACCOUNT_UPDATE, variables, persona=personas["admin"]), "accountUpdate")

    assert payload == {
        "__typename": "Account",
        "id": str(account.pk),
        "name": "Acme 2",
        "website": "https://a.example",
    }
    account.refresh_from_db()
    assert (account.name, account.website) == ("Acme 2", "https://a.example")
    assert account.updated_by == personas["admin"].user


@pytest.mark.parametrize(("persona", "expected"), NOT_ACME_ADMIN)
def test_non_admin_cannot_update_account(
    gql: GraphQL,
    personas: dict[str, Persona],
    account: Account,
    persona: str,
    expected: dict[str, Any],
) -> None:
    before = db_state()

    body = gql(
        ACCOUNT_UPDATE,
        {"id": str(account.pk), "input": {"name": "Hacked"}},
        persona=personas[persona],
    )

    assert _payload(body, "accountUpdate") == expected
    assert db_state() == before


def test_admin_can_delete_account(
    gql: GraphQL, personas: dict[str, Persona], account: Account
) -> None:
    Invitation.objects.create(account=account, email="later@example.com", role="NORMAL_USER")

    body = gql(ACCOUNT_DELETE, {"id": str(account.pk)}, persona=personas["admin"])

    assert _payload(body, "accountDelete") == {"__typename": "Deleted", "id": str(account.pk)}
    assert not Account.objects.filter(pk=account.pk).exists()
    assert not Membership.objects.filter(account_id=account.pk).exists()
    assert not Invitation.objects.exists()
    # The people stay; only the account and what hangs off it go.
    assert User.objects.count() == 3


@pytest.mark.parametrize(("persona", "expected"), NOT_ACME_ADMIN)
def test_non_admin_cannot_delete_account(
    gql: GraphQL,
    personas: dict[str, Persona],
    account: Account,
    persona: str,
    expected: dict[str, Any],
) -> None:
    before = db_state()

    body = gql(ACCOUNT_DELETE, {"id": str(account.pk)}, persona=personas[persona])

    assert _payload(body, "accountDelete") == expected
    assert db_state() == before


def test_admin_can_rotate_app_secret(
    gql: GraphQL, personas: dict[str, Persona], account: Account
) -> None:
    old_hash = account.secret_hash

    body = gql(ACCOUNT_ROTATE_SECRET, {"id": str(account.pk)}, persona=personas["admin"])

    payload = _payload(body, "accountRotateSecret")
    token = payload["appSecretToken"]
    assert payload == {
        "__typename": "AccountSecret",
        "appSecretToken": token,
        "account": {"id": str(account.pk), "appSecretPrefix": token[:12]},
    }
    account.refresh_from_db()
    assert account.secret_hash == secrets.digest(token) != old_hash
    assert selectors.account_for_app_secret(token) == account


@pytest.mark.parametrize(("persona", "expected"), NOT_ACME_ADMIN)
def test_non_admin_cannot_rotate_app_secret(
    gql: GraphQL,
    personas: dict[str, Persona],
    account: Account,
    persona: str,
    expected: dict[str, Any],
) -> None:
    before = db_state()

    body = gql(ACCOUNT_ROTATE_SECRET, {"id": str(account.pk)}, persona=personas[persona])

    assert _payload(body, "accountRotateSecret") == expected
    assert db_state() == before


# --- members ----------------------------------------------------------------------------------


def test_admin_can_invite_member(
    gql: GraphQL, personas: dict[str, Persona], account: Account
) -> None:
    variables = {
        "input": {"accountId": str(account.pk), "email": "new@example.com", "role": "NORMAL_USER"}
    }

    body = gql(MEMBER_INVITE, variables, persona=personas["admin"])

    assert _payload(body, "memberInvite") == {
        "__typename": "Invitation",
        "email": "new@example.com",
        "role": "NORMAL_USER",
        "account": {"name": "Acme"},
    }
    assert list(Invitation.objects.values_list("account", "email", "role", "invited_by")) == [
        (account.pk, "new@example.com", "NORMAL_USER", _user(personas["admin"]).pk)
    ]


@pytest.mark.parametrize(("persona", "expected"), NOT_ACME_ADMIN)
def test_non_admin_cannot_invite_member(
    gql: GraphQL,
    personas: dict[str, Persona],
    account: Account,
    persona: str,
    expected: dict[str, Any],
) -> None:
    before = db_state()
    variables = {
        "input": {"accountId": str(account.pk), "email": "new@example.com", "role": "ADMIN"}
    }

    body = gql(MEMBER_INVITE, variables, persona=personas[persona])

    assert _payload(body, "memberInvite") == expected
    assert db_state() == before


def test_admin_can_add_member(
    gql: GraphQL, personas: dict[str, Persona], account: Account, friend: User
) -> None:
    variables = {
        "input": {"accountId": str(account.pk), "userId": str(friend.pk), "role": "NORMAL_USER"}
    }

    body = gql(MEMBER_ADD, variables, persona=personas["admin"])

    assert _payload(body, "memberAdd") == {
        "__typename": "Member",
        "role": "NORMAL_USER",
        "user": {"email": "friend@example.com"},
        "account": {"name": "Acme"},
    }
    assert Membership.objects.get(account=account, user=friend).role == "NORMAL_USER"


@pytest.mark.parametrize(("persona", "expected"), NOT_ACME_ADMIN)
def test_non_admin_cannot_add_member(
    gql: GraphQL,
    personas: dict[str, Persona],
    account: Account,
    friend: User,
    persona: str,
    expected: dict[str, Any],
) -> None:
    before = db_state()
    variables = {"input": {"accountId": str(account.pk), "userId": str(friend.pk), "role": "ADMIN"}}

    body = gql(MEMBER_ADD, variables, persona=personas[persona])

    assert _payload(body, "memberAdd") == expected
    assert db_state() == before


def test_admin_can_change_member_role(
    gql: GraphQL, personas: dict[str, Persona], account: Account
) -> None:
    membership = Membership.objects.get(user=personas["normal_user"].user)
    variables = {"id": str(membership.pk), "input": {"role": "ADMIN"}}

    body = gql(MEMBER_UPDATE, variables, persona=personas["admin"])

    assert _payload(body, "memberUpdate") == {
        "__typename": "Member",
        "id": str(membership.pk),
        "role": "ADMIN",
        "user": {"email": "normal@example.com"},
    }
    membership.refresh_from_db()
    assert membership.role == "ADMIN"


@pytest.mark.parametrize(("persona", "expected"), NOT_ACME_ADMIN_BY_MEMBER)
def test_non_admin_cannot_change_member_role(
    gql: GraphQL,
    personas: dict[str, Persona],
    account: Account,
    persona: str,
    expected: dict[str, Any],
) -> None:
    # normal_user promoting themselves is the interesting refusal.
    membership = Membership.objects.get(user=personas["normal_user"].user)
    before = db_state()

    body = gql(
        MEMBER_UPDATE,
        {"id": str(membership.pk), "input": {"role": "ADMIN"}},
        persona=personas[persona],
    )

    assert _payload(body, "memberUpdate") == expected
    assert db_state() == before


def test_admin_can_remove_member(
    gql: GraphQL,
    personas: dict[str, Persona],
    account: Account,
    colleague_membership: Membership,
) -> None:
    body = gql(MEMBER_REMOVE, {"id": str(colleague_membership.pk)}, persona=personas["admin"])

    assert _payload(body, "memberRemove") == {
        "__typename": "Deleted",
        "id": str(colleague_membership.pk),
    }
    assert not Membership.objects.filter(pk=colleague_membership.pk).exists()
    assert User.objects.filter(email="colleague@example.com").exists()


@pytest.mark.parametrize(("persona", "expected"), NOT_ACME_ADMIN_BY_MEMBER)
def test_non_admin_cannot_remove_member(
    gql: GraphQL,
    personas: dict[str, Persona],
    account: Account,
    colleague_membership: Membership,
    persona: str,
    expected: dict[str, Any],
) -> None:
    before = db_state()

    body = gql(MEMBER_REMOVE, {"id": str(colleague_membership.pk)}, persona=personas[persona])

    assert _payload(body, "memberRemove") == expected
    assert db_state() == before

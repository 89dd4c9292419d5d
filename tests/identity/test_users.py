"""The `users` query's filter and what `userUpdate` lets each caller change."""

from typing import Any

import pytest

from identity.models import User
from tests.conftest import GraphQL, Persona
from tests.factories import PASSWORD
from tests.identity.helpers import OPERATION_INFO, db_state, invalid, not_found, operation_info

USERS = "query ($filters: UserFilter) { users(filters: $filters) { email } }"
USER_UPDATE = (
    "mutation ($id: ID!, $input: UserUpdateInput!) { userUpdate(id: $id, input: $input) { "
    "__typename ... on User { email fullName } " + OPERATION_INFO + " } }"
)
LOGIN = (
    "mutation ($input: LoginInput!) { login(input: $input) { __typename " + OPERATION_INFO + " } }"
)


def _emails(gql: GraphQL, persona: Persona, email: str | None) -> list[str]:
    body = gql(USERS, {"filters": {"email": email}}, persona=persona)
    return [user["email"] for user in body["data"]["users"]]


def _update(gql: GraphQL, caller: Persona, target: Persona, **fields: str) -> dict[str, Any]:
    assert target.user is not None
    body = gql(USER_UPDATE, {"id": str(target.user.pk), "input": fields}, persona=caller)
    payload: dict[str, Any] = body["data"]["userUpdate"]
    return payload


def _can_log_in(gql: GraphQL, email: str, password: str) -> bool:
    body = gql(LOGIN, {"input": {"email": email, "password": password}})
    return bool(body["data"]["login"]["__typename"] == "AuthPayload")


# --- users(filters) ---------------------------------------------------------------------------


@pytest.mark.usefixtures("personas")
@pytest.mark.parametrize(
    ("persona", "email", "expected"),
    [
        ("admin", "NORMAL@example.com", ["normal@example.com"]),
        ("admin", "admin@example.com", ["admin@example.com"]),
        ("admin", "outsider@example.com", []),
        ("admin", None, ["admin@example.com", "normal@example.com"]),
        ("normal_user", "admin@example.com", []),
        ("normal_user", "normal@example.com", ["normal@example.com"]),
        ("outsider", "normal@example.com", []),
    ],
)
def test_users_filter_by_email_only_narrows_what_the_caller_may_see(
    gql: GraphQL,
    personas: dict[str, Persona],
    persona: str,
    email: str | None,
    expected: list[str],
) -> None:
    assert _emails(gql, personas[persona], email) == expected


# --- userUpdate: yourself ---------------------------------------------------------------------


def test_own_email_change_waits_for_verification(gql: GraphQL, normal_user: Persona) -> None:
    payload = _update(gql, normal_user, normal_user, email=" Nora@Example.org ")

    # The change is pending (test_email_ownership.py follows it through emailVerify).
    assert payload == {
        "__typename": "User",
        "email": "normal@example.com",
        "fullName": "Nora Normal",
    }
    assert User.objects.get(email="normal@example.com").pending_email == "nora@example.org"
    assert _can_log_in(gql, "normal@example.com", PASSWORD)
    assert not _can_log_in(gql, "nora@example.org", PASSWORD)


def test_user_cannot_take_an_email_in_use(
    gql: GraphQL, normal_user: Persona, admin: Persona
) -> None:
    before = db_state()

    payload = _update(gql, normal_user, normal_user, email="ADMIN@example.com")

    assert payload == invalid("email_taken", "A user with this email exists.", "email")
    assert db_state() == before


def test_user_cannot_set_malformed_email(gql: GraphQL, normal_user: Persona) -> None:
    before = db_state()

    payload = _update(gql, normal_user, normal_user, email="nope")

    assert payload == invalid("invalid", "Enter a valid email address.", "email")
    assert db_state() == before


def test_user_cannot_set_too_long_name(gql: GraphQL, normal_user: Persona) -> None:
    before = db_state()

    payload = _update(gql, normal_user, normal_user, fullName="x" * 151)

    assert payload == invalid("invalid", "At most 150 characters.", "fullName")
    assert db_state() == before


def test_user_can_change_password_with_current_password(gql: GraphQL, normal_user: Persona) -> None:
    payload = _update(
        gql, normal_user, normal_user, password="a new long passphrase 7", currentPassword=PASSWORD
    )

    assert payload["__typename"] == "User"
    assert _can_log_in(gql, "normal@example.com", "a new long passphrase 7")
    assert not _can_log_in(gql, "normal@example.com", PASSWORD)


@pytest.mark.parametrize("current", [None, "", "not my password 1"])
def test_password_change_needs_the_right_current_password(
    gql: GraphQL, normal_user: Persona, current: str | None
) -> None:
    fields = {"password": "a new long passphrase 7"}
    if current is not None:
        fields["currentPassword"] = current
    before = db_state()

    payload = _update(gql, normal_user, normal_user, **fields)

    assert payload == invalid(
        "invalid_credentials", "The current password is wrong.", "currentPassword"
    )
    assert db_state() == before


def test_password_change_is_validated(gql: GraphQL, normal_user: Persona) -> None:
    before = db_state()

    payload = _update(gql, normal_user, normal_user, password="short", currentPassword=PASSWORD)

    assert payload == invalid(
        "invalid_password",
        "This password is too short. It must contain at least 8 characters.",
        "password",
    )
    assert db_state() == before


# --- userUpdate: someone else -----------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"email": "taken-over@example.com"},
        {"password": "a new long passphrase 7"},
        {"fullName": "Nora", "email": "taken-over@example.com"},
    ],
)
def test_account_admin_cannot_change_members_email_or_password(
    gql: GraphQL, admin: Persona, normal_user: Persona, fields: dict[str, str]
) -> None:
    before = db_state()

    payload = _update(gql, admin, normal_user, **fields)

    assert payload == operation_info(
        "PERMISSION", "permission_denied", "Only the user can change their email or password."
    )
    assert db_state() == before


def test_normal_user_cannot_update_their_admin(
    gql: GraphQL, admin: Persona, normal_user: Persona
) -> None:
    before = db_state()

    payload = _update(gql, normal_user, admin, fullName="Demoted")

    # The admin is not among the users a normal user may see, so it reads as missing.
    assert payload == not_found("User")
    assert db_state() == before


def test_admin_cannot_update_user_of_another_account(
    gql: GraphQL, admin: Persona, outsider: Persona
) -> None:
    before = db_state()

    payload = _update(gql, admin, outsider, fullName="Hacked")

    assert payload == not_found("User")
    assert db_state() == before


def test_leaving_the_account_ends_the_admins_right_to_rename(
    gql: GraphQL, admin: Persona, normal_user: Persona
) -> None:
    User.objects.get(email="normal@example.com").memberships.all().delete()

    payload = _update(gql, admin, normal_user, fullName="Renamed")

    assert payload == not_found("User")


def test_password_change_revokes_other_tokens_but_keeps_the_current_one(gql, admin) -> None:
    from identity.auth import token_issue
    from identity.models import AuthToken

    other = token_issue(user=admin.user)
    body = gql(
        """mutation ($id: ID!) { userUpdate(id: $id, input: {password: "another long phrase 8",
        currentPassword: "correct horse battery 9"}) { __typename } }""",
        {"id": str(admin.user.pk)},
        persona=admin,
    )
    assert body["data"]["userUpdate"]["__typename"] == "User"
    assert AuthToken.objects.filter(user=admin.user).count() == 1
    assert gql("{ me { email } }", persona=admin)["data"]["me"]["email"] == admin.user.email
    assert (
        gql("{ me { email } }", token=other)["errors"][0]["extensions"]["code"] == "unauthenticated"
    )

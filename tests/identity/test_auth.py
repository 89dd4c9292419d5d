"""Signing up, logging in and out, bearer tokens, password rules and the client address."""

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from django.utils import timezone
from pytest_django.fixtures import Settings

from identity import throttle
from identity.auth import token_issue
from identity.models import Account, AuthToken, Membership, User
from schema.context import client_address
from tests.conftest import GraphQL, Persona, error_codes
from tests.factories import PASSWORD
from tests.identity.helpers import OPERATION_INFO, UNAUTHENTICATED, db_state, invalid

SIGNUP = (
    "mutation ($input: SignupInput!) { signup(input: $input) { __typename "
    "... on AuthPayload { token user { email fullName } } " + OPERATION_INFO + " } }"
)
LOGIN = (
    "mutation ($input: LoginInput!) { login(input: $input) { __typename "
    "... on AuthPayload { token user { email } } " + OPERATION_INFO + " } }"
)
LOGOUT = "mutation { logout { __typename ... on Done { ok } " + OPERATION_INFO + " } }"
ME = "{ me { email } }"

INVALID_CREDENTIALS = invalid("invalid_credentials", "Invalid email or password.")


@pytest.fixture(autouse=True)
def _fresh_throttle() -> Iterator[None]:
    """Failed logins here must not throttle another test's logins."""
    throttle.reset()
    yield
    throttle.reset()


def _signup(gql: GraphQL, **fields: str) -> dict[str, Any]:
    variables = {"email": "new@example.com", "password": PASSWORD, "accountName": "Newco"}
    body = gql(SIGNUP, {"input": {**variables, **fields}})
    payload: dict[str, Any] = body["data"]["signup"]
    return payload


def _login(gql: GraphQL, email: str, password: str = PASSWORD) -> dict[str, Any]:
    body = gql(LOGIN, {"input": {"email": email, "password": password}})
    payload: dict[str, Any] = body["data"]["login"]
    return payload


def _me_with_header(gql: GraphQL, authorization: str) -> dict[str, Any]:
    response = gql.client.post(
        "/graphql/",
        {"query": ME},
        content_type="application/json",
        headers={"Authorization": authorization},
    )
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def _assert_anonymous(body: dict[str, Any]) -> None:
    assert body["data"] is None
    assert error_codes(body) == ["unauthenticated"]
    assert body["errors"][0]["message"] == "Authentication required."


# --- signup -----------------------------------------------------------------------------------


def test_signup_creates_user_admin_of_first_account_and_token(gql: GraphQL) -> None:
    payload = _signup(gql, email="  New@Example.COM ", fullName=" Nina New ")

    user = User.objects.get()
    assert payload == {
        "__typename": "AuthPayload",
        "token": payload["token"],
        "user": {"email": "new@example.com", "fullName": "Nina New"},
    }
    assert user.check_password(PASSWORD)
    assert list(Membership.objects.values_list("user", "account__name", "role")) == [
        (user.pk, "Newco", "ADMIN")
    ]
    assert gql(ME, token=payload["token"]) == {"data": {"me": {"email": "new@example.com"}}}


def test_signup_with_taken_email_is_refused_whatever_the_case(
    gql: GraphQL, normal_user: Persona
) -> None:
    before = db_state()

    payload = _signup(gql, email="NORMAL@example.com")

    assert payload == invalid("email_taken", "A user with this email exists.", "email")
    assert db_state() == before


def test_signup_with_malformed_email_is_refused(gql: GraphQL) -> None:
    payload = _signup(gql, email="not-an-email")

    assert payload == invalid("invalid", "Enter a valid email address.", "email")
    assert User.objects.count() == 0


def test_signup_with_blank_account_name_is_refused(gql: GraphQL) -> None:
    payload = _signup(gql, accountName="   ")

    assert payload == invalid("invalid", "Name must be 1 to 200 characters.", "accountName")
    assert (User.objects.count(), Account.objects.count()) == (0, 0)


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("zx", "This password is too short. It must contain at least 8 characters."),
        ("password", "This password is too common."),
        ("83920174", "This password is entirely numeric."),
        ("new@example.com", "The password is too similar to the email."),
    ],
)
def test_signup_with_weak_password_is_refused(gql: GraphQL, password: str, message: str) -> None:
    payload = _signup(gql, password=password)

    assert payload == invalid("invalid_password", message, "password")
    assert (User.objects.count(), Account.objects.count(), AuthToken.objects.count()) == (0, 0, 0)


# --- login ------------------------------------------------------------------------------------


def test_login_returns_working_token(gql: GraphQL, normal_user: Persona) -> None:
    payload = _login(gql, " Normal@Example.com ")

    assert payload == {
        "__typename": "AuthPayload",
        "token": payload["token"],
        "user": {"email": "normal@example.com"},
    }
    assert gql(ME, token=payload["token"]) == {"data": {"me": {"email": "normal@example.com"}}}
    assert User.objects.get(email="normal@example.com").last_login is not None


def test_login_with_wrong_password_or_unknown_email_answers_the_same(
    gql: GraphQL, normal_user: Persona
) -> None:
    tokens_before = AuthToken.objects.count()

    wrong_password = _login(gql, "normal@example.com", "not the password 1")
    unknown_email = _login(gql, "nobody@example.com")

    assert wrong_password == unknown_email == INVALID_CREDENTIALS
    assert AuthToken.objects.count() == tokens_before


def test_inactive_user_cannot_log_in(gql: GraphQL, normal_user: Persona) -> None:
    User.objects.filter(email="normal@example.com").update(is_active=False)

    assert _login(gql, "normal@example.com") == INVALID_CREDENTIALS


# --- logout -----------------------------------------------------------------------------------


def test_logout_revokes_only_the_token_it_was_called_with(
    gql: GraphQL, normal_user: Persona
) -> None:
    assert normal_user.user is not None
    other_token = token_issue(user=normal_user.user)

    first = gql(LOGOUT, persona=normal_user)
    second = gql(LOGOUT, persona=normal_user)

    assert first == {"data": {"logout": {"__typename": "Done", "ok": True}}}
    assert second == {"data": {"logout": UNAUTHENTICATED}}
    _assert_anonymous(gql(ME, persona=normal_user))
    assert gql(ME, token=other_token) == {"data": {"me": {"email": "normal@example.com"}}}


# --- tokens -----------------------------------------------------------------------------------


def test_tokens_are_stored_only_as_sha256_digests(gql: GraphQL, normal_user: Persona) -> None:
    token = _login(gql, "normal@example.com")["token"]

    row = AuthToken.objects.get(key_hash=hashlib.sha256(token.encode()).hexdigest())
    assert row.prefix == token[:12]
    assert token.startswith("dpu_")
    assert len(token) > 40
    for values in AuthToken.objects.values_list():
        assert all(token not in str(value) for value in values)


def test_expired_token_is_unauthenticated(gql: GraphQL, normal_user: Persona) -> None:
    AuthToken.objects.filter(user=normal_user.user).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    _assert_anonymous(gql(ME, persona=normal_user))


def test_token_of_inactive_user_is_unauthenticated(gql: GraphQL, normal_user: Persona) -> None:
    User.objects.filter(email="normal@example.com").update(is_active=False)

    _assert_anonymous(gql(ME, persona=normal_user))


@pytest.mark.parametrize("scheme", ["Bearer", "Token", "bearer", "token"])
def test_bearer_and_token_schemes_are_accepted(
    gql: GraphQL, normal_user: Persona, scheme: str
) -> None:
    body = _me_with_header(gql, f"{scheme} {normal_user.token}")

    assert body == {"data": {"me": {"email": "normal@example.com"}}}


@pytest.mark.parametrize(
    "authorization",
    ["Basic {token}", "{token}", "Bearer", "Bearer dpu_not-a-real-token"],
)
def test_malformed_or_unknown_credentials_are_unauthenticated(
    gql: GraphQL, normal_user: Persona, authorization: str
) -> None:
    body = _me_with_header(gql, authorization.format(token=normal_user.token))

    _assert_anonymous(body)


def test_session_cookie_does_not_authenticate(gql: GraphQL, normal_user: Persona) -> None:
    assert normal_user.user is not None
    gql.client.force_login(normal_user.user)

    _assert_anonymous(gql(ME))


# --- client address ---------------------------------------------------------------------------
# Throttling itself: tests/identity/test_throttle.py.


@pytest.mark.parametrize(
    ("proxies", "forwarded", "expected"),
    [
        (0, "203.0.113.9", "127.0.0.1"),
        (1, "198.51.100.1, 203.0.113.9", "203.0.113.9"),
        (2, "198.51.100.1, 203.0.113.9", "198.51.100.1"),
        (3, "203.0.113.9", "203.0.113.9"),
    ],
)
def test_client_address_trusts_only_configured_proxies(
    settings: Settings, proxies: int, forwarded: str, expected: str
) -> None:
    settings.NUM_PROXIES = proxies
    meta = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": forwarded}
    request = SimpleNamespace(META=meta)
    info = SimpleNamespace(context=SimpleNamespace(request=request))

    assert throttle.address_from_meta(meta) == expected
    # GraphQL reads it the same way.
    assert client_address(info) == expected  # type: ignore[arg-type]

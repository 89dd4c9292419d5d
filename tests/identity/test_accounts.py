"""Accounts: validation of their fields, and app secrets (hashed at rest, rotated with an
optional grace period)."""

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from identity import secrets, selectors
from identity.models import Account
from tests.conftest import GraphQL, Persona
from tests.factories import PASSWORD
from tests.identity.helpers import OPERATION_INFO, db_state, invalid

ACCOUNT_CREATE = (
    "mutation ($input: AccountCreateInput!) { accountCreate(input: $input) { __typename "
    "... on AccountSecret { appSecretToken account { id } } " + OPERATION_INFO + " } }"
)
ACCOUNT_UPDATE = (
    "mutation ($id: ID!, $input: AccountUpdateInput!) { accountUpdate(id: $id, input: $input) { "
    "__typename ... on Account { name website } " + OPERATION_INFO + " } }"
)
ROTATE = (
    "mutation ($id: ID!, $grace: Int!) { accountRotateSecret(id: $id, graceSeconds: $grace) { "
    "__typename ... on AccountSecret { appSecretToken } " + OPERATION_INFO + " } }"
)
SIGNUP = (
    "mutation ($input: SignupInput!) { signup(input: $input) { __typename "
    + OPERATION_INFO
    + " } }"
)


@pytest.fixture
def acme_secret(account: Account) -> str:
    """The raw app secret of Acme, known to the test."""
    raw = secrets.new_secret(secrets.APP_SECRET_PREFIX)
    Account.objects.filter(pk=account.pk).update(
        secret_hash=secrets.digest(raw), secret_prefix=secrets.visible_part(raw)
    )
    return raw


def _rotate(gql: GraphQL, admin: Persona, account: Account, grace: int) -> dict[str, Any]:
    body = gql(ROTATE, {"id": str(account.pk), "grace": grace}, persona=admin)
    payload: dict[str, Any] = body["data"]["accountRotateSecret"]
    return payload


def _assert_stored_hashed(raw: str) -> None:
    account = Account.objects.get(secret_hash=hashlib.sha256(raw.encode()).hexdigest())
    assert account.secret_prefix == raw[:12]
    for values in Account.objects.values_list():
        assert all(raw not in str(value) for value in values)


# --- app secrets ------------------------------------------------------------------------------


def test_created_account_stores_only_the_digest_of_its_app_secret(
    gql: GraphQL, normal_user: Persona
) -> None:
    body = gql(ACCOUNT_CREATE, {"input": {"name": "Newco"}}, persona=normal_user)

    raw = body["data"]["accountCreate"]["appSecretToken"]
    assert raw.startswith("dpk_")
    assert len(raw) > 40
    _assert_stored_hashed(raw)


def test_rotated_app_secret_is_stored_hashed(
    gql: GraphQL, admin: Persona, account: Account
) -> None:
    raw = _rotate(gql, admin, account, grace=60)["appSecretToken"]

    _assert_stored_hashed(raw)


def test_signup_account_has_a_hashed_app_secret_nobody_has_seen(gql: GraphQL) -> None:
    variables = {"email": "new@example.com", "password": PASSWORD, "accountName": "Newco"}

    gql(SIGNUP, {"input": variables})

    account = Account.objects.get(name="Newco")
    assert len(account.secret_hash) == 64
    assert account.secret_prefix.startswith("dpk_")


def test_rotation_without_grace_retires_the_old_secret_at_once(
    gql: GraphQL, admin: Persona, account: Account, acme_secret: str
) -> None:
    assert selectors.account_for_app_secret(acme_secret) == account

    new = _rotate(gql, admin, account, grace=0)["appSecretToken"]

    assert selectors.account_for_app_secret(acme_secret) is None
    assert selectors.account_for_app_secret(new) == account


def test_rotation_with_grace_keeps_the_old_secret_until_the_grace_ends(
    gql: GraphQL, admin: Persona, account: Account, acme_secret: str
) -> None:
    new = _rotate(gql, admin, account, grace=3600)["appSecretToken"]

    assert selectors.account_for_app_secret(acme_secret) == account
    assert selectors.account_for_app_secret(new) == account
    account.refresh_from_db()
    assert account.previous_secret_expires_at is not None
    assert (
        timedelta(seconds=3590)
        < account.previous_secret_expires_at - timezone.now()
        <= timedelta(seconds=3600)
    )

    Account.objects.filter(pk=account.pk).update(
        previous_secret_expires_at=timezone.now() - timedelta(seconds=1)
    )

    assert selectors.account_for_app_secret(acme_secret) is None
    assert selectors.account_for_app_secret(new) == account


def test_second_rotation_without_grace_ends_an_earlier_grace(
    gql: GraphQL, admin: Persona, account: Account, acme_secret: str
) -> None:
    middle = _rotate(gql, admin, account, grace=3600)["appSecretToken"]

    newest = _rotate(gql, admin, account, grace=0)["appSecretToken"]

    assert selectors.account_for_app_secret(acme_secret) is None
    assert selectors.account_for_app_secret(middle) is None
    assert selectors.account_for_app_secret(newest) == account


@pytest.mark.parametrize("grace", [-1, 7 * 24 * 3600 + 1])
def test_rotation_grace_is_bounded(
    gql: GraphQL, admin: Persona, account: Account, acme_secret: str, grace: int
) -> None:
    before = db_state()

    payload = _rotate(gql, admin, account, grace=grace)

    assert payload == invalid("invalid", "Must be between 0 and 604800 seconds.", "graceSeconds")
    assert db_state() == before
    assert selectors.account_for_app_secret(acme_secret) == account


@pytest.mark.parametrize("raw", ["", "dpk_unknown"])
def test_unknown_app_secret_finds_no_account(account: Account, raw: str) -> None:
    assert selectors.account_for_app_secret(raw) is None


# --- account fields ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"name": "  "}, invalid("invalid", "Name must be 1 to 200 characters.", "name")),
        ({"name": "x" * 201}, invalid("invalid", "Name must be 1 to 200 characters.", "name")),
        (
            {"name": "Newco", "website": "ftp://newco.example"},
            invalid("invalid", "Enter a valid http(s) URL.", "website"),
        ),
        (
            {"name": "Newco", "website": "not a url"},
            invalid("invalid", "Enter a valid http(s) URL.", "website"),
        ),
    ],
)
def test_account_create_validates_fields(
    gql: GraphQL, normal_user: Persona, fields: dict[str, str], expected: dict[str, Any]
) -> None:
    before = db_state()

    body = gql(ACCOUNT_CREATE, {"input": fields}, persona=normal_user)

    assert body["data"]["accountCreate"] == expected
    assert db_state() == before


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"name": ""}, invalid("invalid", "Name must be 1 to 200 characters.", "name")),
        (
            {"website": "javascript:alert(1)"},
            invalid("invalid", "Enter a valid http(s) URL.", "website"),
        ),
    ],
)
def test_account_update_validates_fields(
    gql: GraphQL, admin: Persona, account: Account, fields: dict[str, str], expected: dict[str, Any]
) -> None:
    before = db_state()

    body = gql(ACCOUNT_UPDATE, {"id": str(account.pk), "input": fields}, persona=admin)

    assert body["data"]["accountUpdate"] == expected
    assert db_state() == before


def test_account_update_changes_only_given_fields(
    gql: GraphQL, admin: Persona, account: Account
) -> None:
    Account.objects.filter(pk=account.pk).update(website="https://acme.example")

    first = gql(
        ACCOUNT_UPDATE, {"id": str(account.pk), "input": {"name": " Acme Ltd "}}, persona=admin
    )
    second = gql(
        ACCOUNT_UPDATE,
        {"id": str(account.pk), "input": {"name": None, "website": ""}},
        persona=admin,
    )

    assert first["data"]["accountUpdate"] == {
        "__typename": "Account",
        "name": "Acme Ltd",
        "website": "https://acme.example",
    }
    assert second["data"]["accountUpdate"] == {
        "__typename": "Account",
        "name": "Acme Ltd",
        "website": "",
    }

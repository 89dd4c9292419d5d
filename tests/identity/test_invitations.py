"""Invitations: a pending, single-use, expiring secret mailed to the address; only a user who
holds it and owns the address joins. Signing up with an invited address does not join."""

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone
from pytest_django.fixtures import Settings

from identity import secrets
from identity.auth import token_issue
from identity.models import Account, Invitation, Membership, User
from tests.conftest import Persona
from tests.factories import PASSWORD, add_member, make_user
from tests.identity.helpers import (
    OPERATION_INFO,
    PERMISSION_DENIED,
    UNAUTHENTICATED,
    Call,
    db_state,
    invalid,
    mailed_token,
    not_found,
)

INVITATION_FIELDS = "id email role account { id name } createdAt expiresAt"
MEMBER_INVITE = (
    "mutation ($input: MemberInviteInput!) { memberInvite(input: $input) { __typename "
    f"... on Invitation {{ {INVITATION_FIELDS} }} ... on Member {{ id role user {{ id email }} }} "
    + OPERATION_INFO
    + " } }"
)
INVITATION_ACCEPT = (
    "mutation ($token: String!) { invitationAccept(token: $token) { __typename "
    "... on Member { role user { email emailVerified } account { name } } "
    + OPERATION_INFO
    + " } }"
)
INVITATION_REVOKE = (
    "mutation ($id: ID!) { invitationRevoke(id: $id) { __typename ... on Deleted { id } "
    + OPERATION_INFO
    + " } }"
)
INVITATIONS = "query ($id: ID!) { invitations(accountId: $id) { email role } }"
SIGNUP = (
    "mutation ($input: SignupInput!) { signup(input: $input) { __typename "
    "... on AuthPayload { token user { email emailVerified } } " + OPERATION_INFO + " } }"
)

INVALID_INVITATION = invalid(
    "invalid_invitation", "This invitation is invalid, expired or already used."
)
OTHER_ADDRESS = invalid("invalid_invitation", "This invitation was sent to another email address.")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[timedelta], None]:
    """Move `timezone.now()` by an offset from the real time."""
    real_now = timezone.now

    def move(offset: timedelta) -> None:
        monkeypatch.setattr(timezone, "now", lambda: real_now() + offset)

    return move


def _invite(
    call: Call, admin: Persona, account: Account, email: str, role: str = "NORMAL_USER"
) -> dict[str, Any]:
    variables = {"input": {"accountId": str(account.pk), "email": email, "role": role}}
    payload: dict[str, Any] = call(MEMBER_INVITE, variables, persona=admin)["data"]["memberInvite"]
    return payload


def _token(message: mail.EmailMessage) -> str:
    return mailed_token(message, "dpi_")


def _accept(call: Call, persona: Persona | None, token: str) -> dict[str, Any]:
    token_of = persona.token if persona else None
    body = call(INVITATION_ACCEPT, {"token": token}, token=token_of)
    payload: dict[str, Any] = body["data"]["invitationAccept"]
    return payload


def _persona(user: User) -> Persona:
    return Persona(user.email, user, token_issue(user=user))


# --- memberInvite ------------------------------------------------------------------------------


def test_invitation_is_mailed_with_a_single_use_token_and_an_accept_link(
    call: Call, admin: Persona, account: Account, settings: Settings
) -> None:
    settings.PUBLIC_URL = "https://pusher.example.com"

    payload = _invite(call, admin, account, " Later@Example.com ", role="ADMIN")

    invitation = Invitation.objects.get()
    assert payload == {
        "__typename": "Invitation",
        "id": str(invitation.pk),
        "email": "later@example.com",
        "role": "ADMIN",
        "account": {"id": str(account.pk), "name": "Acme"},
        "createdAt": invitation.created_at.isoformat(),
        "expiresAt": invitation.expires_at.isoformat(),
    }
    assert invitation.expires_at - invitation.created_at == pytest.approx(
        timedelta(hours=72), abs=timedelta(seconds=5)
    )
    assert [m.to for m in mail.outbox] == [["later@example.com"]]
    message = mail.outbox[0]
    assert message.subject == "You are invited to Acme on Data Pusher"
    token = _token(message)
    assert f"https://pusher.example.com/invitations/accept#token={token}" in message.body
    # Only the digest is stored; the secret exists only in the mail.
    assert invitation.secret_hash == secrets.digest(token)
    assert token not in str(db_state())


def test_member_invite_answers_the_same_whether_or_not_the_email_is_a_user(
    call: Call,
    admin: Persona,
    account: Account,
    outsider: Persona,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = timezone.now()
    monkeypatch.setattr(timezone, "now", lambda: now)

    existing = _invite(call, admin, account, "outsider@example.com", role="ADMIN")
    unknown = _invite(call, admin, account, "nobody@example.com", role="ADMIN")

    assert existing["__typename"] == unknown["__typename"] == "Invitation"
    for payload in (existing, unknown):
        del payload["id"]
        del payload["email"]
    assert existing == unknown
    # The mails differ only in the address and the token.
    bodies = [m.body.replace(_token(m), "TOKEN") for m in mail.outbox]
    assert bodies[0].replace("outsider@example.com", "X") == bodies[1].replace(
        "nobody@example.com", "X"
    )
    # The existing user is not pulled in: nothing changes until they accept.
    assert not Membership.objects.filter(user=outsider.user, account=account).exists()
    assert sorted(Invitation.objects.values_list("email", "role")) == [
        ("nobody@example.com", "ADMIN"),
        ("outsider@example.com", "ADMIN"),
    ]


def test_reinviting_refreshes_the_secret_and_the_old_one_dies(
    call: Call, admin: Persona, account: Account, outsider: Persona, clock: Any
) -> None:
    first = _invite(call, admin, account, "outsider@example.com")
    clock(timedelta(hours=1))

    second = _invite(call, admin, account, "OUTSIDER@example.com", role="ADMIN")

    assert (second["id"], second["role"]) == (first["id"], "ADMIN")
    assert datetime.fromisoformat(second["expiresAt"]) > datetime.fromisoformat(first["expiresAt"])
    old, new = (_token(m) for m in mail.outbox)
    assert old != new
    before = db_state()
    assert _accept(call, outsider, old) == INVALID_INVITATION
    assert db_state() == before
    assert _accept(call, outsider, new)["role"] == "ADMIN"


def test_inviting_a_member_is_refused_and_sends_nothing(
    call: Call, admin: Persona, normal_user: Persona, account: Account
) -> None:
    before = db_state()

    payload = _invite(call, admin, account, "normal@example.com", role="ADMIN")

    assert payload == invalid("already_member", "The user is already a member.")
    assert db_state() == before
    assert mail.outbox == []


# --- invitationAccept --------------------------------------------------------------------------


def test_invited_user_joins_only_by_accepting(
    call: Call, admin: Persona, account: Account, outsider: Persona
) -> None:
    _invite(call, admin, account, "outsider@example.com", role="ADMIN")
    assert outsider.user is not None
    assert outsider.user.email_verified_at is None

    payload = _accept(call, outsider, _token(mail.outbox[0]))

    assert payload == {
        "__typename": "Member",
        "role": "ADMIN",
        "user": {"email": "outsider@example.com", "emailVerified": True},
        "account": {"name": "Acme"},
    }
    assert Membership.objects.get(user=outsider.user, account=account).role == "ADMIN"
    assert not Invitation.objects.exists()
    outsider.user.refresh_from_db()
    assert outsider.user.email_verified_at is not None


def test_another_user_holding_the_token_is_refused(
    call: Call, admin: Persona, account: Account, outsider: Persona
) -> None:
    _invite(call, admin, account, "invitee@example.com", role="ADMIN")
    token = _token(mail.outbox[0])
    before = db_state()

    assert _accept(call, outsider, token) == OTHER_ADDRESS

    assert db_state() == before
    # The rightful owner can still accept.
    invitee = _persona(make_user("invitee@example.com"))
    assert _accept(call, invitee, token)["role"] == "ADMIN"


@pytest.mark.parametrize("case", ["wrong", "used", "expired", "revoked"])
def test_wrong_used_expired_or_revoked_tokens_are_refused_alike(
    call: Call, admin: Persona, account: Account, outsider: Persona, clock: Any, case: str
) -> None:
    _invite(call, admin, account, "outsider@example.com")
    token = _token(mail.outbox[0])
    if case == "wrong":
        token = secrets.new_secret("dpi_")
    elif case == "used":
        assert _accept(call, outsider, token)["__typename"] == "Member"
        Membership.objects.filter(user=outsider.user, account=account).delete()
    elif case == "expired":
        clock(timedelta(hours=72, seconds=1))
    else:
        invitation = Invitation.objects.get()
        revoked = call(INVITATION_REVOKE, {"id": str(invitation.pk)}, persona=admin)
        assert revoked["data"]["invitationRevoke"] == {
            "__typename": "Deleted",
            "id": str(invitation.pk),
        }
    before = db_state()

    assert _accept(call, outsider, token) == INVALID_INVITATION

    assert db_state() == before
    assert not Membership.objects.filter(user=outsider.user, account=account).exists()


def test_accepting_needs_a_login(call: Call, admin: Persona, account: Account) -> None:
    _invite(call, admin, account, "outsider@example.com")
    before = db_state()

    assert _accept(call, None, _token(mail.outbox[0])) == UNAUTHENTICATED

    assert db_state() == before


def test_accepting_when_already_a_member_is_refused(
    call: Call, admin: Persona, account: Account, outsider: Persona
) -> None:
    assert outsider.user is not None
    _invite(call, admin, account, "outsider@example.com", role="ADMIN")
    add_member(account, outsider.user)  # added another way meanwhile
    before = db_state()

    payload = _accept(call, outsider, _token(mail.outbox[0]))

    assert payload == invalid("already_member", "The user is already a member.")
    assert db_state() == before


# --- signup -------------------------------------------------------------------------------------


def _signup(call: Call, **fields: str) -> dict[str, Any]:
    variables = {"email": "later@example.com", "password": PASSWORD, "accountName": "Mine"}
    payload: dict[str, Any] = call(SIGNUP, {"input": {**variables, **fields}})["data"]["signup"]
    return payload


def test_signing_up_with_an_invited_address_does_not_join(
    call: Call, admin: Persona, account: Account
) -> None:
    _invite(call, admin, account, "later@example.com", role="ADMIN")

    payload = _signup(call)

    assert payload["__typename"] == "AuthPayload"
    assert payload["user"] == {"email": "later@example.com", "emailVerified": False}
    user = User.objects.get(email="later@example.com")
    assert list(Membership.objects.filter(user=user).values_list("account__name", "role")) == [
        ("Mine", "ADMIN")
    ]
    # The invitation waits for its token.
    assert list(Invitation.objects.values_list("email", "role")) == [("later@example.com", "ADMIN")]


def test_signup_with_the_invitation_token_joins_and_proves_the_address(
    call: Call, admin: Persona, account: Account
) -> None:
    _invite(call, admin, account, "later@example.com", role="ADMIN")
    token = _token(mail.outbox[0])
    mail.outbox.clear()

    payload = _signup(call, email="Later@Example.com", invitationToken=token)

    assert payload["user"] == {"email": "later@example.com", "emailVerified": True}
    user = User.objects.get(email="later@example.com")
    assert sorted(Membership.objects.filter(user=user).values_list("account__name", "role")) == [
        ("Acme", "ADMIN"),
        ("Mine", "ADMIN"),
    ]
    assert not Invitation.objects.exists()
    assert mail.outbox == []  # no verification mail: the token proved the address


@pytest.mark.parametrize(
    ("email", "expected"),
    [("someone@example.com", OTHER_ADDRESS), ("later@example.com", None)],
)
def test_signup_with_a_bad_invitation_token_creates_nothing(
    call: Call, admin: Persona, account: Account, email: str, expected: dict[str, Any] | None
) -> None:
    _invite(call, admin, account, "later@example.com", role="ADMIN")
    token = _token(mail.outbox[0]) if expected else secrets.new_secret("dpi_")
    mail.outbox.clear()
    before = db_state()

    payload = _signup(call, email=email, invitationToken=token)

    assert payload == {
        **(expected or INVALID_INVITATION),
        "messages": [
            {**(expected or INVALID_INVITATION)["messages"][0], "field": "invitationToken"}
        ],
    }
    assert db_state() == before
    assert mail.outbox == []


# --- invitations, invitationRevoke -------------------------------------------------------------


@pytest.mark.usefixtures("personas")
@pytest.mark.parametrize(
    ("persona", "expected"),
    [
        ("admin", [{"email": "later@example.com", "role": "ADMIN"}]),
        ("normal_user", []),
        ("outsider", []),
    ],
)
def test_only_admins_list_invitations(
    call: Call, personas: dict[str, Persona], account: Account, persona: str, expected: list[Any]
) -> None:
    _invite(call, personas["admin"], account, "later@example.com", role="ADMIN")

    body = call(INVITATIONS, {"id": str(account.pk)}, persona=personas[persona])

    assert body == {"data": {"invitations": expected}}


@pytest.mark.usefixtures("personas")
@pytest.mark.parametrize(
    ("persona", "expected"),
    [
        ("normal_user", PERMISSION_DENIED),
        ("outsider", not_found("Invitation")),
        ("anonymous", UNAUTHENTICATED),
    ],
)
def test_only_admins_revoke_invitations(
    call: Call,
    personas: dict[str, Persona],
    account: Account,
    persona: str,
    expected: dict[str, Any],
) -> None:
    _invite(call, personas["admin"], account, "later@example.com")
    before = db_state()

    body = call(
        INVITATION_REVOKE, {"id": str(Invitation.objects.get().pk)}, persona=personas[persona]
    )

    assert body["data"]["invitationRevoke"] == expected
    assert db_state() == before

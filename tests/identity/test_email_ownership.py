"""Proof of email ownership: signup mails a verification token, and a new address takes effect
(for login, membership and invitations) only once a token mailed to it comes back."""

from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone

from identity import secrets
from identity.models import Account, Membership, User
from tests.conftest import Persona
from tests.factories import PASSWORD, make_user
from tests.identity.helpers import (
    OPERATION_INFO,
    UNAUTHENTICATED,
    Call,
    db_state,
    invalid,
    mailed_token,
)

SIGNUP = (
    "mutation ($input: SignupInput!) { signup(input: $input) { __typename "
    "... on AuthPayload { token user { email emailVerified pendingEmail } } "
    + OPERATION_INFO
    + " } }"
)
LOGIN = (
    "mutation ($input: LoginInput!) { login(input: $input) { __typename " + OPERATION_INFO + " } }"
)
USER_FIELDS = "email emailVerified pendingEmail"
USER_UPDATE = (
    "mutation ($id: ID!, $input: UserUpdateInput!) { userUpdate(id: $id, input: $input) { "
    f"__typename ... on User {{ {USER_FIELDS} }} " + OPERATION_INFO + " } }"
)
EMAIL_VERIFY = (
    "mutation ($token: String!) { emailVerify(token: $token) { __typename "
    f"... on User {{ {USER_FIELDS} }} " + OPERATION_INFO + " } }"
)
MEMBER_INVITE = (
    "mutation ($input: MemberInviteInput!) { memberInvite(input: $input) { __typename } }"
)
INVITATION_ACCEPT = (
    "mutation ($token: String!) { invitationAccept(token: $token) { __typename "
    "... on Member { role } " + OPERATION_INFO + " } }"
)

INVALID_VERIFICATION = invalid(
    "invalid_verification", "This verification token is invalid, expired or already used."
)


def _token(message: mail.EmailMessage) -> str:
    return mailed_token(message, "dpv_")


def _change_email(call: Call, persona: Persona, email: str) -> dict[str, Any]:
    assert persona.user is not None
    body = call(
        USER_UPDATE, {"id": str(persona.user.pk), "input": {"email": email}}, persona=persona
    )
    payload: dict[str, Any] = body["data"]["userUpdate"]
    return payload


def _verify(call: Call, persona: Persona | None, token: str) -> dict[str, Any]:
    body = call(EMAIL_VERIFY, {"token": token}, token=persona.token if persona else None)
    payload: dict[str, Any] = body["data"]["emailVerify"]
    return payload


def _can_log_in(call: Call, email: str) -> bool:
    body = call(LOGIN, {"input": {"email": email, "password": PASSWORD}})
    return bool(body["data"]["login"]["__typename"] == "AuthPayload")


# --- signup -------------------------------------------------------------------------------------


def test_signup_mails_a_verification_token_that_proves_the_address(call: Call) -> None:
    body = call(
        SIGNUP,
        {"input": {"email": "New@Example.com", "password": PASSWORD, "accountName": "Newco"}},
    )

    payload = body["data"]["signup"]
    assert payload["user"] == {
        "email": "new@example.com",
        "emailVerified": False,
        "pendingEmail": None,
    }
    assert [(m.to, m.subject) for m in mail.outbox] == [
        (["new@example.com"], "Confirm your email address for Data Pusher")
    ]
    token = _token(mail.outbox[0])
    assert "http://127.0.0.1:8000/email/verify#token=" + token in mail.outbox[0].body
    user = User.objects.get()
    assert user.email_secret_hash == secrets.digest(token)
    me = Persona("new", user, payload["token"])

    assert _verify(call, me, token) == {
        "__typename": "User",
        "email": "new@example.com",
        "emailVerified": True,
        "pendingEmail": None,
    }
    user.refresh_from_db()
    assert user.email_verified_at is not None
    assert user.email_secret_hash == ""
    # Single use.
    assert _verify(call, me, token) == INVALID_VERIFICATION


def test_verification_token_expires(
    call: Call, normal_user: Persona, monkeypatch: pytest.MonkeyPatch
) -> None:
    _change_email(call, normal_user, "nora@example.org")
    token = _token(mail.outbox[0])
    later = timezone.now() + timedelta(hours=48, seconds=1)
    monkeypatch.setattr(timezone, "now", lambda: later)
    before = db_state()

    assert _verify(call, normal_user, token) == INVALID_VERIFICATION

    assert db_state() == before


def test_verification_token_of_another_user_is_refused(
    call: Call, normal_user: Persona, admin: Persona
) -> None:
    _change_email(call, normal_user, "nora@example.org")
    token = _token(mail.outbox[0])
    before = db_state()

    assert _verify(call, admin, token) == INVALID_VERIFICATION
    assert _verify(call, None, token) == UNAUTHENTICATED

    assert db_state() == before


# --- changing the email -------------------------------------------------------------------------


def test_email_change_waits_for_the_token_mailed_to_the_new_address(
    call: Call, normal_user: Persona
) -> None:
    payload = _change_email(call, normal_user, " Nora@Example.org ")

    assert payload == {
        "__typename": "User",
        "email": "normal@example.com",
        "emailVerified": False,
        "pendingEmail": "nora@example.org",
    }
    assert [(m.to, m.subject) for m in mail.outbox] == [
        (["nora@example.org"], "Confirm your new email address for Data Pusher")
    ]
    # Until then the old address is the login.
    assert _can_log_in(call, "normal@example.com")
    assert not _can_log_in(call, "nora@example.org")

    verified = _verify(call, normal_user, _token(mail.outbox[0]))

    assert verified == {
        "__typename": "User",
        "email": "nora@example.org",
        "emailVerified": True,
        "pendingEmail": None,
    }
    assert _can_log_in(call, "nora@example.org")
    assert not _can_log_in(call, "normal@example.com")


def test_invitation_to_the_new_address_waits_for_its_verification(
    call: Call, normal_user: Persona, outsider: Persona
) -> None:
    """A user who merely claims an address cannot accept what is sent to it."""
    other = Account.objects.get(name="Other")
    _change_email(call, normal_user, "boss@example.org")
    verification = _token(mail.outbox[0])
    invite = {"input": {"accountId": str(other.pk), "email": "boss@example.org", "role": "ADMIN"}}
    assert call(MEMBER_INVITE, invite, persona=outsider)["data"]["memberInvite"] == {
        "__typename": "Invitation"
    }
    invitation = mailed_token(mail.outbox[1], "dpi_")
    before = db_state()

    refused = call(INVITATION_ACCEPT, {"token": invitation}, persona=normal_user)

    assert refused["data"]["invitationAccept"] == invalid(
        "invalid_invitation", "This invitation was sent to another email address."
    )
    assert db_state() == before
    assert _verify(call, normal_user, verification)["email"] == "boss@example.org"
    accepted = call(INVITATION_ACCEPT, {"token": invitation}, persona=normal_user)
    assert accepted["data"]["invitationAccept"] == {"__typename": "Member", "role": "ADMIN"}
    assert Membership.objects.filter(user=normal_user.user, account=other).exists()


def test_address_taken_before_verification_is_refused_at_verification(
    call: Call, normal_user: Persona
) -> None:
    _change_email(call, normal_user, "nora@example.org")
    token = _token(mail.outbox[0])
    make_user("nora@example.org")
    before = db_state()

    payload = _verify(call, normal_user, token)

    assert payload == invalid("email_taken", "A user with this email exists.")
    assert db_state() == before


def test_changing_back_to_the_current_address_cancels_the_pending_change(
    call: Call, normal_user: Persona
) -> None:
    _change_email(call, normal_user, "nora@example.org")
    token = _token(mail.outbox[0])

    payload = _change_email(call, normal_user, "NORMAL@example.com")

    assert payload == {
        "__typename": "User",
        "email": "normal@example.com",
        "emailVerified": False,
        "pendingEmail": None,
    }
    assert _verify(call, normal_user, token) == INVALID_VERIFICATION
    # The current address is not verified yet, so a fresh token for it was mailed.
    assert [m.to for m in mail.outbox] == [["nora@example.org"], ["normal@example.com"]]
    assert _verify(call, normal_user, _token(mail.outbox[1]))["emailVerified"] is True


def test_a_second_change_replaces_the_first(call: Call, normal_user: Persona) -> None:
    _change_email(call, normal_user, "first@example.org")
    _change_email(call, normal_user, "second@example.org")
    first, second = (_token(m) for m in mail.outbox)

    assert _verify(call, normal_user, first) == INVALID_VERIFICATION
    assert _verify(call, normal_user, second)["email"] == "second@example.org"


def test_pending_email_and_verification_are_shown_only_to_yourself(
    call: Call, admin: Persona, normal_user: Persona
) -> None:
    _change_email(call, normal_user, "nora@example.org")
    User.objects.filter(pk=normal_user.user.pk).update(email_verified_at=timezone.now())  # type: ignore[union-attr]
    query = "{ users { email emailVerified pendingEmail } }"

    as_admin = call(query, persona=admin)["data"]["users"]
    as_self = call(query, persona=normal_user)["data"]["users"]

    assert as_admin == [
        {"email": "admin@example.com", "emailVerified": False, "pendingEmail": None},
        {"email": "normal@example.com", "emailVerified": False, "pendingEmail": None},
    ]
    assert as_self == [
        {"email": "normal@example.com", "emailVerified": True, "pendingEmail": "nora@example.org"}
    ]

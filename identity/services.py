"""Write operations on users and accounts (members and invitations: identity/members.py).

Every function takes keyword arguments, checks the policy first, writes in one transaction and
raises `ValidationError` (with a code), `NotFound`, `Forbidden` or `Unauthenticated`.
"""

import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import password_validation
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import IntegrityError, transaction
from django.utils import timezone

from delivery.models import Destination
from delivery.validators import clean_max_in_flight, clean_rate_limit
from identity import auth, mail, members, secrets, selectors, throttle
from identity.errors import ErrorCode, Forbidden, NotFound, invalid
from identity.ids import parse_pk
from identity.models import Account, AuthToken, Membership, Role, User
from identity.permissions import Action, Actor, check, require_user
from identity.validators import clean_email
from project.db import lock_referencing_rows, retry_contended

MAX_SECRET_GRACE_SECONDS = 7 * 24 * 3600


def _validate_password(password: str, user: User, *, field: str = "password") -> None:
    try:
        password_validation.validate_password(password, user)
    except ValidationError as error:
        raise invalid(ErrorCode.INVALID_PASSWORD, " ".join(error.messages), field=field) from None


def _clean_account_fields(
    name: str | None, website: str | None, *, name_field: str = "name"
) -> None:
    if name is not None and not (0 < len(name.strip()) <= 200):
        raise invalid(ErrorCode.INVALID, "Name must be 1 to 200 characters.", field=name_field)
    if website:
        try:
            URLValidator(schemes=["http", "https"])(website)
        except ValidationError:
            raise invalid(
                ErrorCode.INVALID, "Enter a valid http(s) URL.", field="website"
            ) from None


def _new_app_secret(account: Account) -> str:
    raw = secrets.new_secret(secrets.APP_SECRET_PREFIX)
    account.secret_hash = secrets.digest(raw)
    account.secret_prefix = secrets.visible_part(raw)
    return raw


# --- Users -----------------------------------------------------------------------------------


@transaction.atomic
def user_signup(
    *,
    email: str,
    password: str,
    account_name: str,
    full_name: str = "",
    invitation_token: str | None = None,
) -> tuple[User, Account, str]:
    """Create a user, a first account where they are ADMIN, and issue a token. Returns
    (user, account, raw token). Pending invitations for the email are *not* joined: with
    `invitation_token` (the secret of an invitation sent to this email) that invitation is
    accepted in the same transaction and the email counts as verified; without it a
    verification token is mailed to the address after commit.

    Raises ValidationError: `invalid` (email, accountName), `email_taken`, `invalid_password`,
    `invalid_invitation` (invitationToken; nothing is created).
    """
    email = clean_email(email)
    _clean_account_fields(account_name, None, name_field="accountName")
    user = User(email=email, full_name=full_name.strip())
    _validate_password(password, user)
    invitation = (
        members.invitation_for_token(invitation_token, email=email, field="invitationToken")
        if invitation_token
        else None
    )
    if User.objects.filter(email__iexact=email).exists():
        raise invalid(ErrorCode.EMAIL_TAKEN, "A user with this email exists.", field="email")
    user.set_password(password)
    if invitation is None:
        _email_secret_issue(user)
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:  # lost a race with a concurrent signup
        raise invalid(
            ErrorCode.EMAIL_TAKEN, "A user with this email exists.", field="email"
        ) from None
    account = _account_insert(user=user, name=account_name, website="")[0]
    if invitation is not None:
        members.invitation_consume(invitation, user=user)
    return user, account, auth.token_issue(user=user)


def user_login(*, email: str, password: str, client_address: str) -> tuple[User, str]:
    """Check the password through the login throttle and issue a token. Returns (user, raw
    token).

    Raises ValidationError `throttled` past a failure limit (identity.throttle; the password is
    not checked then), and `invalid_credentials` for a wrong email or password alike (no hint
    which one was wrong).
    """
    user = User.objects.filter(email__iexact=email.strip(), is_active=True).first()
    checked = throttle.password_check(
        user=user, email=email, password=password, client_address=client_address
    )
    if user is None or not checked:
        raise invalid(ErrorCode.INVALID_CREDENTIALS, "Invalid email or password.")
    User.objects.filter(pk=user.pk).update(last_login=timezone.now())
    return user, auth.token_issue(user=user)


def user_logout(*, actor: Actor, token: str | None) -> None:
    """Revoke the token the request was made with."""
    require_user(actor)
    if token:
        auth.token_revoke(token)


@transaction.atomic
def user_update(
    *,
    actor: Actor,
    user_id: int | str,
    full_name: str | None = None,
    email: str | None = None,
    password: str | None = None,
    current_password: str | None = None,
    current_token: str | None = None,
    client_address: str = "",
) -> User:
    """Update a user. Users change their own name, email and password (a password change
    needs `current_password` and revokes the user's other tokens). A new email does not take
    effect at once: it is kept as the pending email and a verification token is mailed to it
    after commit (`email_verify` applies it); until then login, membership and invitations use
    the current address. Setting the current address cancels a pending change; while the
    current address is unverified and has no live token, a new token is mailed to it.

    Someone else may change only the name, and only of a user *exclusively theirs*: every
    account the user belongs to is one the actor administers (superusers: anyone). Otherwise a
    visible user raises Forbidden.

    Raises NotFound (user not visible), Forbidden, ValidationError (`email_taken`, ...).
    """
    me = require_user(actor)
    pk = parse_pk(user_id)
    user = None if pk is None else selectors.user_list(actor=me).filter(pk=pk).first()
    if user is None:
        raise NotFound("User")
    if user.pk != me.pk:
        if (
            not me.is_superuser
            and not selectors.user_list(actor=me, administered=True).filter(pk=user.pk).exists()
        ):
            raise Forbidden()
        if email is not None or password is not None:
            raise Forbidden("Only the user can change their email or password.")
        if (
            not me.is_superuser
            and not selectors.user_list(actor=me, exclusive=True).filter(pk=user.pk).exists()
        ):
            raise Forbidden()
    if full_name is not None:
        if len(full_name) > 150:
            raise invalid(ErrorCode.INVALID, "At most 150 characters.", field="fullName")
        user.full_name = full_name.strip()
    if email is not None:
        email = clean_email(email)
        if email == user.email:
            if user.pending_email:  # cancels the change; its token dies
                user.pending_email = ""
                user.email_secret_hash, user.email_secret_expires_at = "", None
            if user.email_verified_at is None and not _email_secret_live(user):
                _email_secret_issue(user)
        else:
            if User.objects.filter(email__iexact=email).exclude(pk=user.pk).exists():
                raise invalid(
                    ErrorCode.EMAIL_TAKEN, "A user with this email exists.", field="email"
                )
            user.pending_email = email
            _email_secret_issue(user)
    if password is not None:
        if user.pk == me.pk and not throttle.password_check(
            user=me, email=me.email, password=current_password or "", client_address=client_address
        ):
            raise invalid(
                ErrorCode.INVALID_CREDENTIALS,
                "The current password is wrong.",
                field="currentPassword",
            )
        _validate_password(password, user)
        user.set_password(password)
        # A new password ends every other session; the token making this call keeps working.
        AuthToken.objects.filter(user=user).exclude(
            key_hash=secrets.digest(current_token or "")
        ).delete()
    user.save()
    return user


def _email_secret_live(user: User) -> bool:
    expires = user.email_secret_expires_at
    return bool(user.email_secret_hash) and expires is not None and expires > timezone.now()


def _email_secret_issue(user: User) -> None:
    """Give `user` a new verification token (the previous one dies) for the pending email, or
    the current one when none is pending, and mail it there after commit. The caller saves."""
    raw = secrets.new_secret(User.EMAIL_SECRET_PREFIX)
    expires_at = timezone.now() + timedelta(hours=settings.EMAIL_VERIFICATION_TTL_HOURS)
    user.email_secret_hash, user.email_secret_expires_at = secrets.digest(raw), expires_at
    mail.email_verification_send(
        to=user.pending_email or user.email,
        token=raw,
        expires_at=expires_at,
        new=bool(user.pending_email),
    )


@transaction.atomic
def email_verify(*, actor: Actor, token: str) -> User:
    """Prove the caller's address with the token mailed to it: a pending email becomes the
    email (checked again for `email_taken` now), otherwise the current email is marked
    verified. The token is single-use and expires after EMAIL_VERIFICATION_TTL_HOURS.

    Raises Unauthenticated, ValidationError `invalid_verification` (wrong, expired, used or
    another user's token; nothing written) or `email_taken`.
    """
    me = require_user(actor)
    user = User.objects.select_for_update().get(pk=me.pk)
    if (
        not token
        or not _email_secret_live(user)
        or not secrets.matches(token, user.email_secret_hash)
    ):
        raise invalid(
            ErrorCode.INVALID_VERIFICATION,
            "This verification token is invalid, expired or already used.",
        )
    if user.pending_email:
        if User.objects.filter(email__iexact=user.pending_email).exclude(pk=user.pk).exists():
            raise invalid(ErrorCode.EMAIL_TAKEN, "A user with this email exists.")
        user.email, user.pending_email = user.pending_email, ""
    user.email_verified_at = timezone.now()
    user.email_secret_hash, user.email_secret_expires_at = "", None
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:  # the address was taken meanwhile
        raise invalid(ErrorCode.EMAIL_TAKEN, "A user with this email exists.") from None
    return user


# --- Accounts -------------------------------------------------------------------------------


def _account_insert(*, user: User, name: str, website: str) -> tuple[Account, str]:
    account = Account(name=name.strip(), website=website, created_by=user, updated_by=user)
    raw = _new_app_secret(account)
    account.save()
    Membership.objects.create(user=user, account=account, role=Role.ADMIN)
    return account, raw


@transaction.atomic
def account_create(*, actor: Actor, name: str, website: str = "") -> tuple[Account, str]:
    """Create an account with the actor as ADMIN. Returns (account, raw app secret)."""
    user = require_user(actor)
    _clean_account_fields(name, website)
    return _account_insert(user=user, name=name, website=website)


@transaction.atomic
def account_update(
    *,
    actor: Actor,
    account_id: uuid.UUID | str,
    name: str | None = None,
    website: str | None = None,
    default_max_in_flight: int | None = None,
    default_rate_limit: int | None = None,
) -> Account:
    """Rename or change the website of an account, or its destinations' default limits
    (ADMIN; 0: back to the server's default). Raises ValidationError `invalid`,
    `invalid_max_in_flight`, `invalid_rate_limit`."""
    check(actor, Action.ACCOUNT_MANAGE, account_id)
    _clean_account_fields(name, website)
    limits: dict[str, int | None] = {}
    if default_max_in_flight is not None:
        limits["default_max_in_flight"] = clean_max_in_flight(
            default_max_in_flight, "defaultMaxInFlight"
        )
    if default_rate_limit is not None:
        limits["default_rate_limit"] = clean_rate_limit(default_rate_limit, "defaultRateLimit")
    account = Account.objects.select_for_update().get(pk=account_id)
    if name is not None:
        account.name = name.strip()
    if website is not None:
        account.website = website
    if any(getattr(account, field) != value for field, value in limits.items()):
        for field, value in limits.items():
            setattr(account, field, value)
        # Workers keep copies of destinations, reloaded when a destination's updated_at moves.
        Destination.objects.filter(account=account).update(updated_at=timezone.now())
    account.updated_by = require_user(actor)
    account.save()
    return account


def account_delete(*, actor: Actor, account_id: uuid.UUID | str) -> None:
    """Delete an account with its members and invitations (ADMIN).

    Safe while events arrive: the account row is locked first, so ingests that commit after
    that wait and then find the account gone (incoming_data answers 401) instead of adding rows
    the cascade did not collect; then the rows that reference it (deliveries being recorded
    finish first). Retried once after a deadlock or a row that appeared at commit;
    raises Contended (`unavailable`) if that persists."""
    retry_contended(lambda: _account_delete(actor=actor, account_id=account_id), integrity=True)


@transaction.atomic
def _account_delete(*, actor: Actor, account_id: uuid.UUID | str) -> None:
    check(actor, Action.ACCOUNT_MANAGE, account_id)
    account = Account.objects.select_for_update().get(pk=account_id)
    lock_referencing_rows(account)
    _forget_secrets(account)
    account.delete()


@transaction.atomic
def account_rotate_secret(
    *, actor: Actor, account_id: uuid.UUID | str, grace_seconds: int = 0
) -> tuple[Account, str]:
    """Replace the app secret (ADMIN). The old one keeps working for `grace_seconds`
    (0 to 7 days) so senders can switch without dropping data. Returns (account, raw secret)."""
    check(actor, Action.ACCOUNT_MANAGE, account_id)
    if not 0 <= grace_seconds <= MAX_SECRET_GRACE_SECONDS:
        raise invalid(
            ErrorCode.INVALID,
            f"Must be between 0 and {MAX_SECRET_GRACE_SECONDS} seconds.",
            field="graceSeconds",
        )
    account = Account.objects.select_for_update().get(pk=account_id)
    _forget_secrets(account)
    if grace_seconds:
        account.previous_secret_hash = account.secret_hash
        account.previous_secret_expires_at = timezone.now() + timedelta(seconds=grace_seconds)
    else:
        account.previous_secret_hash = ""
        account.previous_secret_expires_at = None
    raw = _new_app_secret(account)
    account.updated_by = require_user(actor)
    account.save()
    return account, raw


def _forget_secrets(account: Account) -> None:
    """Drop cached app-secret lookups of the account once the change is committed."""
    hashes = [h for h in (account.secret_hash, account.previous_secret_hash) if h]
    keys = [selectors.app_secret_cache_key(h) for h in hashes]

    def forget() -> None:
        selectors.forget_app_secrets(hashes)
        cache.delete_many(keys)

    transaction.on_commit(forget)

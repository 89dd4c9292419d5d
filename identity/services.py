"""Write operations on users, accounts and members.

Every function takes keyword arguments, checks the policy first, writes in one transaction and
raises `ValidationError` (with a code), `NotFound`, `Forbidden` or `Unauthenticated`.
"""

import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import password_validation
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone

from identity import auth, secrets, selectors, throttle
from identity.errors import ErrorCode, Forbidden, NotFound, invalid
from identity.ids import parse_pk
from identity.models import Account, AuthToken, Invitation, Membership, Role, User
from identity.permissions import Action, Actor, check, require_user

MAX_SECRET_GRACE_SECONDS = 7 * 24 * 3600


def _clean_email(email: str, *, field: str = "email") -> str:
    email = User.objects.normalize_email(email.strip()).lower()
    try:
        validate_email(email)
    except ValidationError:
        raise invalid(ErrorCode.INVALID, "Enter a valid email address.", field=field) from None
    return email


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
    *, email: str, password: str, account_name: str, full_name: str = ""
) -> tuple[User, Account, str]:
    """Create a user, a first account where they are ADMIN, turn pending invitations for the
    email into memberships, and issue a token. Returns (user, account, raw token).

    Raises ValidationError: `invalid` (email, accountName), `email_taken`, `invalid_password`.
    """
    email = _clean_email(email)
    _clean_account_fields(account_name, None, name_field="accountName")
    user = User(email=email, full_name=full_name.strip())
    _validate_password(password, user)
    if User.objects.filter(email__iexact=email).exists():
        raise invalid(ErrorCode.EMAIL_TAKEN, "A user with this email exists.", field="email")
    user.set_password(password)
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError:  # lost a race with a concurrent signup
        raise invalid(
            ErrorCode.EMAIL_TAKEN, "A user with this email exists.", field="email"
        ) from None
    account = _account_insert(user=user, name=account_name, website="")[0]
    for invitation in Invitation.objects.filter(email=email):
        Membership.objects.get_or_create(
            user=user, account_id=invitation.account_id, defaults={"role": invitation.role}
        )
    Invitation.objects.filter(email=email).delete()
    return user, account, auth.token_issue(user=user)


def user_login(*, email: str, password: str, client_address: str) -> tuple[User, str]:
    """Check the password and issue a token. Returns (user, raw token).

    Failed attempts are counted per email and per client address; past the limits the call
    raises `throttled` without checking the password. Wrong email or password both raise
    `invalid_credentials` (no hint which one was wrong).
    """
    window = settings.LOGIN_THROTTLE_WINDOW_SECONDS
    email = email.strip().lower()
    limits = (
        ("email", email, settings.LOGIN_FAILURES_PER_EMAIL),
        ("address", client_address, settings.LOGIN_FAILURES_PER_ADDRESS),
    )
    if any(
        throttle.failures(scope, subject, window=window) >= cap for scope, subject, cap in limits
    ):
        raise invalid(
            ErrorCode.THROTTLED,
            f"Too many failed logins. Try again in {throttle.retry_after(window)} seconds.",
        )
    user = User.objects.filter(email__iexact=email, is_active=True).first()
    if user is None or not user.check_password(password):
        if user is None:
            # Spend the same time as a real check so response time does not reveal emails.
            User().set_password(password)
        for scope, subject, _ in limits:
            throttle.record_failure(scope, subject, window=window)
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
) -> User:
    """Update a user. Users change their own name, email and password (a password change
    needs `current_password` and revokes the user's other tokens); an admin of an account the
    user belongs to may change only role-free profile fields (the name).

    Raises NotFound (user not visible), Forbidden, ValidationError.
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
    if full_name is not None:
        if len(full_name) > 150:
            raise invalid(ErrorCode.INVALID, "At most 150 characters.", field="fullName")
        user.full_name = full_name.strip()
    if email is not None:
        email = _clean_email(email)
        if User.objects.filter(email__iexact=email).exclude(pk=user.pk).exists():
            raise invalid(ErrorCode.EMAIL_TAKEN, "A user with this email exists.", field="email")
        user.email = email
    if password is not None:
        if user.pk == me.pk and not me.check_password(current_password or ""):
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
) -> Account:
    """Rename or change the website of an account (ADMIN)."""
    check(actor, Action.ACCOUNT_MANAGE, account_id)
    _clean_account_fields(name, website)
    account = Account.objects.select_for_update().get(pk=account_id)
    if name is not None:
        account.name = name.strip()
    if website is not None:
        account.website = website
    account.updated_by = require_user(actor)
    account.save()
    return account


@transaction.atomic
def account_delete(*, actor: Actor, account_id: uuid.UUID | str) -> None:
    """Delete an account with its members and invitations (ADMIN)."""
    check(actor, Action.ACCOUNT_MANAGE, account_id)
    account = Account.objects.get(pk=account_id)
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
    keys = [
        selectors.app_secret_cache_key(h)
        for h in (account.secret_hash, account.previous_secret_hash)
        if h
    ]
    transaction.on_commit(lambda: cache.delete_many(keys))


# --- Members --------------------------------------------------------------------------------


def _clean_role(role: str) -> str:
    if role not in Role.values:
        raise invalid(ErrorCode.INVALID, "Unknown role.", field="role")
    return role


def _ensure_admin_remains(membership: Membership, *, new_role: str | None) -> None:
    """Raise `last_admin` if changing/removing `membership` would leave no ADMIN."""
    if membership.role != Role.ADMIN or new_role == Role.ADMIN:
        return
    # Lock the account row so two concurrent demotions cannot both pass the count.
    Account.objects.select_for_update().filter(pk=membership.account_id).first()
    admins = Membership.objects.filter(account_id=membership.account_id, role=Role.ADMIN)
    if admins.count() <= 1:
        raise invalid(ErrorCode.LAST_ADMIN, "An account must keep at least one admin.")


@transaction.atomic
def member_invite(
    *, actor: Actor, account_id: uuid.UUID | str, email: str, role: str
) -> Membership | Invitation:
    """Give `email` a role in the account (ADMIN). An existing user becomes a member at once;
    an unknown email gets an invitation that turns into a membership when they sign up.

    Raises `already_member`, `already_invited`, `invalid`.
    """
    check(actor, Action.MEMBER_MANAGE, account_id)
    email = _clean_email(email)
    role = _clean_role(role)
    user = User.objects.filter(email__iexact=email).first()
    if user is not None:
        return _membership_insert(actor=actor, account_id=account_id, user=user, role=role)
    invitation, created = Invitation.objects.get_or_create(
        account_id=account_id,
        email=email,
        defaults={"role": role, "invited_by": require_user(actor)},
    )
    if not created:
        raise invalid(ErrorCode.ALREADY_INVITED, "This email is already invited.", field="email")
    return invitation


def _membership_insert(
    *, actor: Actor, account_id: uuid.UUID | str, user: User, role: str
) -> Membership:
    if Membership.objects.filter(account_id=account_id, user=user).exists():
        raise invalid(ErrorCode.ALREADY_MEMBER, "The user is already a member.")
    return Membership.objects.create(account_id=account_id, user=user, role=role)


@transaction.atomic
def member_add(
    *, actor: Actor, account_id: uuid.UUID | str, user_id: int | str, role: str
) -> Membership:
    """Add a user the actor can already see (a member of another account they administer)
    to the account (ADMIN). Unknown or invisible users raise NotFound."""
    check(actor, Action.MEMBER_MANAGE, account_id)
    role = _clean_role(role)
    pk = parse_pk(user_id)
    users = selectors.user_list(actor=actor, administered=True)
    user = None if pk is None else users.filter(pk=pk).first()
    if user is None:
        raise NotFound("User")
    return _membership_insert(actor=actor, account_id=account_id, user=user, role=role)


def _membership_for_change(actor: Actor, membership_id: int | str) -> Membership:
    require_user(actor)
    pk = parse_pk(membership_id)
    membership = (
        None
        if pk is None
        else selectors.member_list(actor=actor).select_related("account").filter(pk=pk).first()
    )
    if membership is None:
        raise NotFound("Member")
    return membership


@transaction.atomic
def member_update(*, actor: Actor, membership_id: int | str, role: str) -> Membership:
    """Change a member's role (ADMIN). Raises `last_admin` when demoting the last ADMIN."""
    membership = _membership_for_change(actor, membership_id)
    check(actor, Action.MEMBER_MANAGE, membership.account_id)
    role = _clean_role(role)
    _ensure_admin_remains(membership, new_role=role)
    membership.role = role
    membership.save(update_fields=["role", "updated_at"])
    return membership


@transaction.atomic
def member_remove(*, actor: Actor, membership_id: int | str) -> None:
    """Remove a member (ADMIN; any member may remove themselves, i.e. leave).
    Raises `last_admin` when removing the last ADMIN."""
    membership = _membership_for_change(actor, membership_id)
    if membership.user_id != require_user(actor).pk:
        check(actor, Action.MEMBER_MANAGE, membership.account_id)
    _ensure_admin_remains(membership, new_role=None)
    membership.delete()

"""Read operations, each returning a queryset already scoped to what the actor may see, so
that filters applied afterwards can only narrow it."""

import time
import uuid

from django.conf import settings
from django.core.cache import cache
from django.db.models import Q, QuerySet
from django.utils import timezone

from identity import secrets
from identity.ids import parse_uuid
from identity.models import Account, Invitation, Membership, Role, User
from identity.permissions import Action, Actor, account_ids


def user_list(
    *,
    actor: Actor,
    email: str | None = None,
    administered: bool = False,
    exclusive: bool = False,
) -> QuerySet[User]:
    """Users the actor may see: themselves, plus the members of every account where they are
    ADMIN (superusers: everyone). With `administered`, the same set (it is what an admin may
    act on). With `exclusive`, only the users *exclusively theirs*: every membership of the
    user is in an account the actor administers (whose profile the actor may edit; a user who
    is also in anyone else's account is left out). `email` filters case-insensitively."""
    if not isinstance(actor, User) or not actor.is_active:
        return User.objects.none()
    users = User.objects.all()
    if not actor.is_superuser:
        admin_accounts = Membership.objects.filter(user=actor, role=Role.ADMIN).values("account_id")
        users = users.filter(
            Q(pk=actor.pk) | Q(memberships__account_id__in=admin_accounts)
        ).distinct()
        if exclusive:
            elsewhere = Membership.objects.exclude(account_id__in=admin_accounts)
            users = users.exclude(pk__in=elsewhere.values("user_id"))
    if email is not None:
        users = users.filter(email__iexact=email.strip())
    return users.order_by("id")


def account_list(*, actor: Actor) -> QuerySet[Account]:
    """Accounts the actor is a member of (superusers: all)."""
    return Account.objects.filter(pk__in=account_ids(actor, Action.ACCOUNT_VIEW))


def account_get(*, actor: Actor, account_id: uuid.UUID | str) -> Account | None:
    """One visible account, or None when missing or foreign (indistinguishable)."""
    pk = parse_uuid(account_id)
    return None if pk is None else account_list(actor=actor).filter(pk=pk).first()


def member_list(*, actor: Actor, account_id: uuid.UUID | str | None = None) -> QuerySet[Membership]:
    """Memberships of the accounts the actor belongs to, optionally of one account."""
    members = Membership.objects.filter(account_id__in=account_ids(actor, Action.MEMBER_VIEW))
    if account_id is not None:
        pk = parse_uuid(account_id)
        if pk is None:
            return Membership.objects.none()
        members = members.filter(account_id=pk)
    return members


def invitation_list(
    *, actor: Actor, account_id: uuid.UUID | str | None = None
) -> QuerySet[Invitation]:
    """Pending invitations of the accounts the actor administers (ADMIN; superusers: all),
    optionally of one account; expired ones are included until re-sent or revoked."""
    invitations = Invitation.objects.filter(account_id__in=account_ids(actor, Action.MEMBER_MANAGE))
    if account_id is not None:
        pk = parse_uuid(account_id)
        if pk is None:
            return Invitation.objects.none()
        invitations = invitations.filter(account_id=pk)
    return invitations


def account_for_app_secret(raw: str) -> Account | None:
    """The account whose current app secret, or previous one still in its grace period, is
    `raw`. The lookup is by digest, so timing reveals nothing about stored secrets."""
    if not raw:
        return None
    hashed = secrets.digest(raw)
    return Account.objects.filter(
        Q(secret_hash=hashed)
        | Q(previous_secret_hash=hashed, previous_secret_expires_at__gt=timezone.now())
    ).first()


def app_secret_cache_key(secret_hash: str) -> str:
    return f"appsecret:{secret_hash}"


# Current app secrets seen by this process: digest -> (until, account id), for at most
# APP_SECRET_LOCAL_SECONDS (a copy of the shared cache entry, so that a busy sender costs no
# cache round trip per event; a rotation here drops it at once, elsewhere within that time).
_seen_secrets: dict[str, tuple[float, uuid.UUID]] = {}
_SEEN_SECRETS_MAX = 10_000


def account_id_for_app_secret(raw: str) -> uuid.UUID | None:
    """Like `account_for_app_secret`, for the hot path: only the account id, cached for the
    current secret (services drop the entry when the secret is rotated or the account
    deleted), and kept in this process for APP_SECRET_LOCAL_SECONDS. A previous secret in its
    grace period is always checked in the database."""
    if not raw:
        return None
    hashed = secrets.digest(raw)
    seen = _seen_secrets.get(hashed)
    now = time.monotonic()
    if seen is not None and seen[0] > now:
        return seen[1]
    cached = cache.get(app_secret_cache_key(hashed))
    if cached is not None:
        account_id = uuid.UUID(cached)
    else:
        account = account_for_app_secret(raw)
        if account is None:
            return None
        if account.secret_hash != hashed:
            return account.pk  # a previous secret: never cached
        account_id = account.pk
        cache.set(app_secret_cache_key(hashed), str(account_id), settings.HOT_PATH_CACHE_SECONDS)
    if settings.APP_SECRET_LOCAL_SECONDS > 0:
        if len(_seen_secrets) >= _SEEN_SECRETS_MAX:
            _seen_secrets.clear()
        _seen_secrets[hashed] = (now + settings.APP_SECRET_LOCAL_SECONDS, account_id)
    return account_id


def forget_app_secrets(secret_hashes: list[str]) -> None:
    """Drop this process's copies of these secrets' lookups (the shared entries are the
    caller's to delete)."""
    for hashed in secret_hashes:
        _seen_secrets.pop(hashed, None)

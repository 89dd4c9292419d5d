"""Write operations on members and invitations.

Every function takes keyword arguments, checks the policy first, writes in one transaction and
raises `ValidationError` (with a code), `NotFound`, `Forbidden` or `Unauthenticated`.
Nobody joins an account without consent: an invitation is accepted by the owner of the
invited address, proven by the single-use secret mailed to it.
"""

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from identity import mail, secrets, selectors
from identity.errors import ErrorCode, NotFound, invalid
from identity.ids import parse_pk
from identity.models import Account, Invitation, Membership, Role, User
from identity.permissions import Action, Actor, account_ids, check, require_user
from identity.validators import clean_email


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
) -> Invitation:
    """Invite `email` to the account with `role` (ADMIN): a pending invitation whose
    single-use secret (valid INVITATION_TTL_HOURS) is mailed to the address after commit. The
    answer, the mail and the queries made are the same whether or not a user has the email;
    nobody joins until the owner of the address accepts (`invitation_accept`). Inviting the
    same email again refreshes the role, the secret and the expiry (the old secret dies) and
    mails again. Returns the invitation.

    Raises `already_member` (a member of this account has the email), `invalid`.
    """
    check(actor, Action.MEMBER_MANAGE, account_id)
    inviter = require_user(actor)
    email = clean_email(email)
    role = _clean_role(role)
    account = Account.objects.get(pk=account_id)
    if Membership.objects.filter(account=account, user__email__iexact=email).exists():
        raise invalid(ErrorCode.ALREADY_MEMBER, "The user is already a member.")
    raw = secrets.new_secret(Invitation.SECRET_PREFIX)
    expires_at = timezone.now() + timedelta(hours=settings.INVITATION_TTL_HOURS)
    invitation, _ = Invitation.objects.update_or_create(
        account=account,
        email=email,
        defaults={
            "role": role,
            "invited_by": inviter,
            "secret_hash": secrets.digest(raw),
            "expires_at": expires_at,
        },
    )
    mail.invitation_send(
        to=email,
        account_name=account.name,
        role_label=Role(role).label,
        token=raw,
        expires_at=expires_at,
    )
    return invitation


def invitation_for_token(raw: str, *, email: str, field: str | None = None) -> Invitation:
    """The live invitation whose secret is `raw`, locked, if it was sent to `email`."""
    invitation = (
        Invitation.objects.select_for_update()
        .filter(secret_hash=secrets.digest(raw), expires_at__gt=timezone.now())
        .exclude(secret_hash="")
        .first()
    )
    if invitation is None or not secrets.matches(raw, invitation.secret_hash):
        raise invalid(
            ErrorCode.INVALID_INVITATION,
            "This invitation is invalid, expired or already used.",
            field=field,
        )
    if invitation.email.lower() != email.lower():
        raise invalid(
            ErrorCode.INVALID_INVITATION,
            "This invitation was sent to another email address.",
            field=field,
        )
    return invitation


def invitation_consume(invitation: Invitation, *, user: User) -> Membership:
    """Turn the invitation into `user`'s membership and delete it. Presenting its secret
    proved that the user receives mail at the address, so the email counts as verified."""
    if Membership.objects.filter(account_id=invitation.account_id, user=user).exists():
        raise invalid(ErrorCode.ALREADY_MEMBER, "The user is already a member.")
    try:
        with transaction.atomic():
            membership = Membership.objects.create(
                account_id=invitation.account_id, user=user, role=invitation.role
            )
    except IntegrityError:  # accepted twice at the same moment
        raise invalid(ErrorCode.ALREADY_MEMBER, "The user is already a member.") from None
    invitation.delete()
    if user.email_verified_at is None:
        user.email_verified_at = timezone.now()
        changes: dict[str, object] = {"email_verified_at": user.email_verified_at}
        if not user.pending_email:  # a token for the current address is not needed any more
            user.email_secret_hash, user.email_secret_expires_at = "", None
            changes.update(email_secret_hash="", email_secret_expires_at=None)
        User.objects.filter(pk=user.pk).update(**changes)
    return membership


@transaction.atomic
def invitation_accept(*, actor: Actor, token: str) -> Membership:
    """Join the account of the invitation whose secret is `token`, with its role. The caller's
    email must be the invited address (case-insensitive); a pending email change does not
    count until verified. Single-use: the invitation is deleted. Returns the membership.

    Raises Unauthenticated; `invalid_invitation` (wrong, expired, used or revoked token, or
    another address; nothing written); `already_member`.
    """
    user = require_user(actor)
    invitation = invitation_for_token(token, email=user.email)
    return invitation_consume(invitation, user=user)


@transaction.atomic
def invitation_revoke(*, actor: Actor, invitation_id: int | str) -> None:
    """Delete a pending invitation (ADMIN); its secret stops working.

    Raises NotFound (missing, or not in an account of the actor), Forbidden (NORMAL_USER).
    """
    require_user(actor)
    pk = parse_pk(invitation_id)
    visible = Invitation.objects.filter(account_id__in=account_ids(actor, Action.MEMBER_VIEW))
    invitation = None if pk is None else visible.filter(pk=pk).first()
    if invitation is None:
        raise NotFound("Invitation")
    check(actor, Action.MEMBER_MANAGE, invitation.account_id)
    deleted, _ = Invitation.objects.filter(pk=invitation.pk).delete()
    if not deleted:  # revoked or accepted meanwhile
        raise NotFound("Invitation")


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
    """Change a member's role (ADMIN). Raises `last_admin` when demoting the last ADMIN,
    NotFound when the member is missing (also when removed concurrently)."""
    membership = _membership_for_change(actor, membership_id)
    check(actor, Action.MEMBER_MANAGE, membership.account_id)
    role = _clean_role(role)
    _ensure_admin_remains(membership, new_role=role)
    membership.role, membership.updated_at = role, timezone.now()
    # Conditional on the row still existing: a removal that committed since the lookup makes
    # this a missing member, not a failed save.
    changed = Membership.objects.filter(pk=membership.pk).update(
        role=role, updated_at=membership.updated_at
    )
    if not changed:
        raise NotFound("Member")
    return membership


@transaction.atomic
def member_remove(*, actor: Actor, membership_id: int | str) -> None:
    """Remove a member (ADMIN; any member may remove themselves, i.e. leave).
    Raises `last_admin` when removing the last ADMIN, NotFound when the member is missing (also
    when removed concurrently)."""
    membership = _membership_for_change(actor, membership_id)
    if membership.user_id != require_user(actor).pk:
        check(actor, Action.MEMBER_MANAGE, membership.account_id)
    _ensure_admin_remains(membership, new_role=None)
    deleted, _ = Membership.objects.filter(pk=membership.pk).delete()
    if not deleted:
        raise NotFound("Member")

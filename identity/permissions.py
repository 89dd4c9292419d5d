"""The one policy: may this user do this on this account?

GraphQL, REST and tasks all ask here. Non-members get `NotFound` (a foreign id answers exactly
like a missing one); members whose role lacks the action get `Forbidden`.
"""

import uuid
from enum import StrEnum
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.db.models import QuerySet

from identity.errors import Forbidden, NotFound, Unauthenticated
from identity.ids import parse_uuid
from identity.models import Account, Membership, Role, User

Actor = User | AnonymousUser


class Action(StrEnum):
    ACCOUNT_VIEW = "account_view"
    ACCOUNT_MANAGE = "account_manage"
    MEMBER_VIEW = "member_view"
    MEMBER_MANAGE = "member_manage"
    DESTINATION_VIEW = "destination_view"
    DESTINATION_UPDATE = "destination_update"
    DESTINATION_MANAGE = "destination_manage"
    LOG_VIEW = "log_view"
    LOG_RETRY = "log_retry"


_NORMAL_USER_ACTIONS = frozenset(
    {
        Action.ACCOUNT_VIEW,
        Action.MEMBER_VIEW,
        Action.DESTINATION_VIEW,
        Action.DESTINATION_UPDATE,
        Action.LOG_VIEW,
    }
)
ROLE_ACTIONS: dict[str, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.NORMAL_USER: _NORMAL_USER_ACTIONS,
}


def require_user(actor: Actor) -> User:
    """Return the authenticated user or raise `Unauthenticated`."""
    if not isinstance(actor, User) or not actor.is_authenticated or not actor.is_active:
        raise Unauthenticated()
    return actor


def role_in(actor: Actor, account_id: uuid.UUID | str) -> str | None:
    """The actor's role in the account (superusers act as ADMIN), or None for non-members."""
    if not isinstance(actor, User) or not actor.is_active:
        return None
    pk = parse_uuid(account_id)
    if pk is None:  # a malformed id answers like a missing one
        return None
    account_id = pk
    if actor.is_superuser:
        return Role.ADMIN if Account.objects.filter(pk=account_id).exists() else None
    return (
        Membership.objects.filter(user=actor, account_id=account_id)
        .values_list("role", flat=True)
        .first()
    )


def allows(role: str | None, action: Action) -> bool:
    return role is not None and action in ROLE_ACTIONS[role]


def check(actor: Actor, action: Action, account_id: uuid.UUID | str) -> str:
    """Return the actor's role if it allows `action` on the account.

    Raises `Unauthenticated` for anonymous actors, `NotFound` when the actor is not a member
    (or the account does not exist), `Forbidden` when the role lacks the action.
    """
    require_user(actor)
    role = role_in(actor, account_id)
    if role is None:
        raise NotFound("Account")
    if not allows(role, action):
        raise Forbidden()
    return role


def roles_allowing(action: Action) -> list[str]:
    return [role for role, actions in ROLE_ACTIONS.items() if action in actions]


def account_ids(actor: Actor, action: Action) -> QuerySet[Account, Any]:
    """Ids of the accounts where the actor may do `action`, as a subquery for scoping."""
    if not isinstance(actor, User) or not actor.is_active:
        return Account.objects.none().values("pk")
    if actor.is_superuser:
        return Account.objects.values("pk")
    return Account.objects.filter(
        memberships__user=actor, memberships__role__in=roles_allowing(action)
    ).values("pk")

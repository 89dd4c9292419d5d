"""GraphQL object types for identity. The optimizer turns nested selections into
select_related/prefetch_related, so lists cost a constant number of queries."""

from datetime import datetime

import strawberry
import strawberry_django
from strawberry import auto
from strawberry.types import Info

from delivery import health
from identity import models
from schema import context

Role = strawberry.enum(models.Role, name="Role", description="A member's role in an account.")


@strawberry_django.type(models.User, name="User")
class User:
    id: strawberry.ID
    email: auto
    full_name: auto
    date_joined: datetime

    @strawberry_django.field(
        only=["email_verified_at"],
        description="Whether you proved that you receive mail at `email` (a verification or "
        "invitation token). Shown for yourself only: false for other users.",
    )
    def email_verified(self, root: models.User, info: Info) -> bool:
        return _is_caller(root, info) and root.email_verified_at is not None

    @strawberry_django.field(
        only=["pending_email"],
        description="A new address you asked for, waiting for the token mailed to it "
        "(`emailVerify`); until then `email` stays in force. Shown for yourself only: null "
        "for other users.",
    )
    def pending_email(self, root: models.User, info: Info) -> str | None:
        return (root.pending_email or None) if _is_caller(root, info) else None


def _is_caller(user: models.User, info: Info) -> bool:
    if getattr(user, _OWN_PAYLOAD, False):
        return True
    actor = context.actor(info)
    return isinstance(actor, models.User) and actor.pk == user.pk


# Marks the user of an AuthPayload: signup and login answer the user their own state, though
# the request that signed up or logged in carried no token.
_OWN_PAYLOAD = "_datapusher_own_payload"


@strawberry.type(
    name="AccountHealth", description="The health of an account's destinations, added up."
)
class AccountHealth:
    destinations: int
    healthy: int
    degraded: int
    open: int
    half_open: int
    disabled: int
    attempts_1h: int
    failures_1h: int
    success_rate_1h: float | None
    backlog: int = strawberry.field(
        description=f"Waiting deliveries (each destination's counted up to {health.BACKLOG_CAP})."
    )


@strawberry_django.type(models.Account, name="Account")
class Account:
    id: strawberry.ID
    name: auto
    website: auto
    app_secret_prefix: str = strawberry_django.field(
        field_name="secret_prefix",
        description="The visible start of the current app secret, to tell secrets apart.",
    )
    default_max_in_flight: int | None = strawberry_django.field(
        description="Concurrent requests to each destination without its own maxInFlight; "
        "null: the server's default."
    )
    default_rate_limit: int | None = strawberry_django.field(
        description="Requests per second to each destination without its own rateLimit; null: "
        "the server's default (none unless configured)."
    )
    created_at: datetime
    updated_at: datetime
    members: list["Member"] = strawberry_django.field(
        field_name="memberships", description="Members of the account and their roles."
    )

    @strawberry_django.field(only=["id"], description="Its destinations' health, added up.")
    def health(self, root: models.Account) -> AccountHealth:
        totals = health.account_totals(root.pk)
        states = totals.by_state
        return AccountHealth(
            destinations=totals.destinations,
            healthy=states[health.State.HEALTHY],
            degraded=states[health.State.DEGRADED],
            open=states[health.State.OPEN],
            half_open=states[health.State.HALF_OPEN],
            disabled=states[health.State.DISABLED],
            attempts_1h=totals.attempts_1h,
            failures_1h=totals.failures_1h,
            success_rate_1h=totals.success_rate_1h,
            backlog=totals.backlog,
        )


@strawberry_django.type(models.Membership, name="Member")
class Member:
    id: strawberry.ID
    role: Role  # type: ignore[valid-type]
    user: User
    account: Account
    created_at: datetime
    updated_at: datetime


@strawberry_django.type(models.Invitation, name="Invitation")
class Invitation:
    id: strawberry.ID
    email: auto
    role: Role  # type: ignore[valid-type]
    account: Account
    created_at: datetime
    expires_at: datetime


@strawberry.type
class AuthPayload:
    token: str = strawberry.field(description="Bearer token; send as `Authorization: Bearer …`.")
    user: User

    def __post_init__(self) -> None:
        setattr(self.user, _OWN_PAYLOAD, True)


@strawberry.type
class AccountSecret:
    account: Account
    app_secret_token: str = strawberry.field(
        description="The app secret (`CL-X-TOKEN`). Shown only now: it is stored hashed."
    )


@strawberry.type
class Deleted:
    id: strawberry.ID


@strawberry.type
class Done:
    ok: bool = True

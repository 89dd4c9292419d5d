"""GraphQL object types for identity. The optimizer turns nested selections into
select_related/prefetch_related, so lists cost a constant number of queries."""

from datetime import datetime

import strawberry
import strawberry_django
from strawberry import auto

from identity import models

Role = strawberry.enum(models.Role, name="Role", description="A member's role in an account.")


@strawberry_django.type(models.User, name="User")
class User:
    id: strawberry.ID
    email: auto
    full_name: auto
    date_joined: datetime


@strawberry_django.type(models.Account, name="Account")
class Account:
    id: strawberry.ID
    name: auto
    website: auto
    app_secret_prefix: str = strawberry_django.field(
        field_name="secret_prefix",
        description="The visible start of the current app secret, to tell secrets apart.",
    )
    created_at: datetime
    updated_at: datetime
    members: list["Member"] = strawberry_django.field(
        field_name="memberships", description="Members of the account and their roles."
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


@strawberry.type
class AuthPayload:
    token: str = strawberry.field(description="Bearer token; send as `Authorization: Bearer …`.")
    user: User


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

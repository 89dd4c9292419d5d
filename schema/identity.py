"""Queries and mutations for users, accounts and members. Each resolver finds the actor,
calls one service or selector and shapes the result."""

import strawberry
import strawberry_django
from strawberry.types import Info

from identity import selectors, services
from schema import context
from schema.context import given
from schema.types import (
    Account,
    AccountSecret,
    AuthPayload,
    Deleted,
    Done,
    Invitation,
    Member,
    Role,
    User,
)


@strawberry.input
class SignupInput:
    email: str
    password: str
    account_name: str
    full_name: str = ""


@strawberry.input
class LoginInput:
    email: str
    password: str


@strawberry.input
class UserFilter:
    email: str | None = strawberry.UNSET


@strawberry.input
class UserUpdateInput:
    full_name: str | None = strawberry.UNSET
    email: str | None = strawberry.UNSET
    password: str | None = strawberry.UNSET
    current_password: str | None = strawberry.UNSET


@strawberry.input
class AccountCreateInput:
    name: str
    website: str = ""


@strawberry.input
class AccountUpdateInput:
    name: str | None = strawberry.UNSET
    website: str | None = strawberry.UNSET


@strawberry.input
class MemberInviteInput:
    account_id: strawberry.ID
    email: str
    role: Role  # type: ignore[valid-type]


@strawberry.input
class MemberAddInput:
    account_id: strawberry.ID
    user_id: strawberry.ID
    role: Role  # type: ignore[valid-type]


@strawberry.input
class MemberUpdateInput:
    role: Role  # type: ignore[valid-type]


@strawberry.type
class IdentityQuery:
    @strawberry_django.field(description="The calling user. Requires a token.")
    def me(self, info: Info) -> User:
        return context.user(info)  # type: ignore[return-value]

    @strawberry_django.field(
        description="Users you may see: yourself, plus members of the accounts you administer."
    )
    def users(self, info: Info, filters: UserFilter | None = None) -> list[User]:
        email = given(filters.email) if filters else None
        return selectors.user_list(actor=context.user(info), email=email)  # type: ignore[return-value]

    @strawberry_django.field(description="Accounts you are a member of.")
    def accounts(self, info: Info) -> list[Account]:
        return selectors.account_list(actor=context.user(info))  # type: ignore[return-value]

    @strawberry_django.field(description="One of your accounts; null when missing or not yours.")
    def account(self, info: Info, id: strawberry.ID) -> Account | None:
        return selectors.account_get(actor=context.user(info), account_id=id)  # type: ignore[return-value]

    @strawberry_django.field(
        description="Members of one of your accounts; empty when missing or not yours."
    )
    def members(self, info: Info, account_id: strawberry.ID) -> list[Member]:
        return selectors.member_list(actor=context.user(info), account_id=account_id)  # type: ignore[return-value]


@strawberry.type
class IdentityMutation:
    @strawberry_django.mutation(
        description="Create a user and a first account where they are ADMIN; returns a token. "
        "Codes: email_taken, invalid_password, invalid."
    )
    def signup(self, info: Info, input: SignupInput) -> AuthPayload:
        user, _, token = services.user_signup(
            email=input.email,
            password=input.password,
            account_name=input.account_name,
            full_name=input.full_name,
        )
        return AuthPayload(token=token, user=user)  # type: ignore[arg-type]

    @strawberry_django.mutation(
        description="Exchange email and password for a token. "
        "Codes: invalid_credentials, throttled (too many failures per email or address)."
    )
    def login(self, info: Info, input: LoginInput) -> AuthPayload:
        user, token = services.user_login(
            email=input.email, password=input.password, client_address=context.client_address(info)
        )
        return AuthPayload(token=token, user=user)  # type: ignore[arg-type]

    @strawberry_django.mutation(description="Revoke the token this request was made with.")
    def logout(self, info: Info) -> Done:
        services.user_logout(actor=context.actor(info), token=context.token(info))
        return Done()

    @strawberry_django.mutation(
        description="Update a user: yourself (name, email, password with currentPassword), or "
        "the name of a member of an account you administer."
    )
    def user_update(self, info: Info, id: strawberry.ID, input: UserUpdateInput) -> User:
        return services.user_update(  # type: ignore[return-value]
            actor=context.actor(info),
            user_id=id,
            full_name=given(input.full_name),
            email=given(input.email),
            password=given(input.password),
            current_password=given(input.current_password),
            current_token=context.token(info),
        )

    @strawberry_django.mutation(
        description="Create an account where you are ADMIN. The app secret is returned only here."
    )
    def account_create(self, info: Info, input: AccountCreateInput) -> AccountSecret:
        account, secret = services.account_create(
            actor=context.actor(info), name=input.name, website=input.website
        )
        return AccountSecret(account=account, app_secret_token=secret)  # type: ignore[arg-type]

    @strawberry_django.mutation(description="Rename an account or change its website. ADMIN.")
    def account_update(self, info: Info, id: strawberry.ID, input: AccountUpdateInput) -> Account:
        return services.account_update(  # type: ignore[return-value]
            actor=context.actor(info),
            account_id=id,
            name=given(input.name),
            website=given(input.website),
        )

    @strawberry_django.mutation(description="Delete an account and everything in it. ADMIN.")
    def account_delete(self, info: Info, id: strawberry.ID) -> Deleted:
        services.account_delete(actor=context.actor(info), account_id=id)
        return Deleted(id=id)

    @strawberry_django.mutation(
        description="Issue a new app secret, shown only here. ADMIN. With graceSeconds (at most "
        "7 days) the previous secret keeps working that long."
    )
    def account_rotate_secret(
        self, info: Info, id: strawberry.ID, grace_seconds: int = 0
    ) -> AccountSecret:
        account, secret = services.account_rotate_secret(
            actor=context.actor(info), account_id=id, grace_seconds=grace_seconds
        )
        return AccountSecret(account=account, app_secret_token=secret)  # type: ignore[arg-type]

    @strawberry_django.mutation(
        description="Give an email a role in an account. ADMIN. An existing user becomes a "
        "Member at once; an unknown email gets an Invitation, turned into a membership at signup."
    )
    def member_invite(self, info: Info, input: MemberInviteInput) -> Member | Invitation:
        return services.member_invite(  # type: ignore[return-value]
            actor=context.actor(info),
            account_id=input.account_id,
            email=input.email,
            role=input.role,
        )

    @strawberry_django.mutation(
        description="Add a user you can see (a member of another account you administer). ADMIN."
    )
    def member_add(self, info: Info, input: MemberAddInput) -> Member:
        return services.member_add(  # type: ignore[return-value]
            actor=context.actor(info),
            account_id=input.account_id,
            user_id=input.user_id,
            role=input.role,
        )

    @strawberry_django.mutation(
        description="Change a member's role. ADMIN. Code last_admin when demoting the last admin."
    )
    def member_update(self, info: Info, id: strawberry.ID, input: MemberUpdateInput) -> Member:
        return services.member_update(  # type: ignore[return-value]
            actor=context.actor(info), membership_id=id, role=input.role
        )

    @strawberry_django.mutation(
        description="Remove a member. ADMIN, or any member removing themselves. "
        "Code last_admin when removing the last admin."
    )
    def member_remove(self, info: Info, id: strawberry.ID) -> Deleted:
        services.member_remove(actor=context.actor(info), membership_id=id)
        return Deleted(id=id)

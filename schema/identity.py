"""Queries and mutations for users, accounts and members. Each resolver finds the actor,
calls one service or selector and shapes the result."""

import strawberry
import strawberry_django
from strawberry.types import Info

from identity import members, selectors, services
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
    invitation_token: str | None = strawberry.field(
        default=None,
        description="The token of an invitation mailed to this email: accepted in the same "
        "transaction (the email then counts as verified).",
    )


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
    default_max_in_flight: int | None = strawberry.field(
        default=strawberry.UNSET,
        description="Concurrent requests to each destination without its own maxInFlight, 1 "
        "to 100; 0: back to the server's default (DELIVERY_MAX_IN_FLIGHT).",
    )
    default_rate_limit: int | None = strawberry.field(
        default=strawberry.UNSET,
        description="Requests per second to each destination without its own rateLimit, 1 to "
        "10000; 0: back to the server's default (DELIVERY_RATE_LIMIT).",
    )


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

    @strawberry_django.field(
        description="Pending invitations of an account, expired ones included until re-sent "
        "or revoked. ADMIN; empty for everyone else."
    )
    def invitations(self, info: Info, account_id: strawberry.ID) -> list[Invitation]:
        return selectors.invitation_list(actor=context.user(info), account_id=account_id)  # type: ignore[return-value]


@strawberry.type
class IdentityMutation:
    @strawberry_django.mutation(
        description="Create a user and a first account where they are ADMIN; returns a token. "
        "Invitations to the email are not joined by signing up: pass invitationToken to accept "
        "one, or accept later with invitationAccept. Without it a verification token is mailed "
        "to the email (emailVerify). "
        "Codes: email_taken, invalid_password, invalid, invalid_invitation."
    )
    def signup(self, info: Info, input: SignupInput) -> AuthPayload:
        user, _, token = services.user_signup(
            email=input.email,
            password=input.password,
            account_name=input.account_name,
            full_name=input.full_name,
            invitation_token=input.invitation_token,
        )
        return AuthPayload(token=token, user=user)  # type: ignore[arg-type]

    @strawberry_django.mutation(
        description="Exchange email and password for a token. "
        "Codes: invalid_credentials, throttled (too many failed password checks per email and "
        "address, per address or per email)."
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
        "the name of a user exclusively yours: every account they belong to is one you "
        "administer (otherwise permission_denied; superusers may rename anyone). A new email "
        "becomes pendingEmail and takes effect (for login, membership and invitations) only "
        "when the token mailed to it is passed to emailVerify; setting the current email "
        "cancels a pending change. Codes: email_taken, invalid_credentials, invalid_password, "
        "invalid, permission_denied, not_found, throttled (a wrong currentPassword counts as a "
        "failed login)."
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
            client_address=context.client_address(info),
        )

    @strawberry_django.mutation(
        description="Prove your email with the token mailed to it (at signup, or to the new "
        "address after userUpdate(email)): a pending email becomes your email, otherwise your "
        "email is marked verified. Requires a token (login); single-use, valid "
        "EMAIL_VERIFICATION_TTL_HOURS. Codes: invalid_verification (wrong, expired, used or "
        "not yours; nothing changes), email_taken (the new address was taken meanwhile)."
    )
    def email_verify(self, info: Info, token: str) -> User:
        return services.email_verify(actor=context.actor(info), token=token)  # type: ignore[return-value]

    @strawberry_django.mutation(
        description="Create an account where you are ADMIN. The app secret is returned only here."
    )
    def account_create(self, info: Info, input: AccountCreateInput) -> AccountSecret:
        account, secret = services.account_create(
            actor=context.actor(info), name=input.name, website=input.website
        )
        return AccountSecret(account=account, app_secret_token=secret)  # type: ignore[arg-type]

    @strawberry_django.mutation(
        description="Rename an account, change its website, or its destinations' default "
        "limits (defaultMaxInFlight, defaultRateLimit). ADMIN. Codes: invalid, "
        "invalid_max_in_flight, invalid_rate_limit, not_found, permission_denied."
    )
    def account_update(self, info: Info, id: strawberry.ID, input: AccountUpdateInput) -> Account:
        return services.account_update(  # type: ignore[return-value]
            actor=context.actor(info),
            account_id=id,
            name=given(input.name),
            website=given(input.website),
            default_max_in_flight=given(input.default_max_in_flight),
            default_rate_limit=given(input.default_rate_limit),
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
        description="Invite an email to an account with a role. ADMIN. Always answers a pending "
        "Invitation (never a Member, the same whether or not a user has the email) and mails "
        "its single-use token to the address; nobody joins until a user logged in with that "
        "email passes the token to invitationAccept (or signup) within INVITATION_TTL_HOURS. "
        "Inviting the same email again refreshes the role, token and expiry and mails again. "
        "Codes: already_member, invalid."
    )
    def member_invite(self, info: Info, input: MemberInviteInput) -> Member | Invitation:
        return members.member_invite(  # type: ignore[return-value]
            actor=context.actor(info),
            account_id=input.account_id,
            email=input.email,
            role=input.role,
        )

    @strawberry_django.mutation(
        description="Accept an invitation with the token from its mail: you join its account "
        "with its role, and your email counts as verified. Requires a token (login) whose user's "
        "email is the invited address; single-use. Codes: invalid_invitation (wrong, expired, "
        "used or revoked token, or another address; nothing changes), already_member."
    )
    def invitation_accept(self, info: Info, token: str) -> Member:
        return members.invitation_accept(actor=context.actor(info), token=token)  # type: ignore[return-value]

    @strawberry_django.mutation(
        description="Revoke a pending invitation; its token stops working. ADMIN."
    )
    def invitation_revoke(self, info: Info, id: strawberry.ID) -> Deleted:
        members.invitation_revoke(actor=context.actor(info), invitation_id=id)
        return Deleted(id=id)

    @strawberry_django.mutation(
        description="Add a user you can see (a member of another account you administer). ADMIN."
    )
    def member_add(self, info: Info, input: MemberAddInput) -> Member:
        return members.member_add(  # type: ignore[return-value]
            actor=context.actor(info),
            account_id=input.account_id,
            user_id=input.user_id,
            role=input.role,
        )

    @strawberry_django.mutation(
        description="Change a member's role. ADMIN. Code last_admin when demoting the last admin."
    )
    def member_update(self, info: Info, id: strawberry.ID, input: MemberUpdateInput) -> Member:
        return members.member_update(  # type: ignore[return-value]
            actor=context.actor(info), membership_id=id, role=input.role
        )

    @strawberry_django.mutation(
        description="Remove a member. ADMIN, or any member removing themselves. "
        "Code last_admin when removing the last admin."
    )
    def member_remove(self, info: Info, id: strawberry.ID) -> Deleted:
        members.member_remove(actor=context.actor(info), membership_id=id)
        return Deleted(id=id)

"""Plain factory functions: explicit, typed, no magic."""

import itertools

from identity import secrets
from identity.models import Account, Membership, Role, User

_seq = itertools.count(1)
PASSWORD = "correct horse battery 9"


def make_user(email: str | None = None, **extra: object) -> User:
    return User.objects.create_user(email or f"user{next(_seq)}@example.com", PASSWORD, **extra)


def make_account(admin: User | None = None, name: str | None = None) -> tuple[Account, str]:
    """An account (with `admin` as ADMIN when given) and its raw app secret."""
    raw = secrets.new_secret(secrets.APP_SECRET_PREFIX)
    account = Account.objects.create(
        name=name or f"Account {next(_seq)}",
        secret_hash=secrets.digest(raw),
        secret_prefix=secrets.visible_part(raw),
        created_by=admin,
        updated_by=admin,
    )
    if admin is not None:
        Membership.objects.create(user=admin, account=account, role=Role.ADMIN)
    return account, raw


def add_member(account: Account, user: User, role: str = Role.NORMAL_USER) -> Membership:
    return Membership.objects.create(account=account, user=user, role=role)

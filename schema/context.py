"""Who is calling: the bearer token is the only credential the GraphQL API accepts.

Session cookies are ignored here on purpose: the endpoint is exempt from CSRF checks, which is
only safe when no ambient credential can authenticate a request (STACK.md trap 7).
"""

from typing import Any

from django.contrib.auth.models import AnonymousUser
from strawberry.types import Info

from identity.auth import token_user
from identity.models import User
from identity.permissions import Actor, require_user


def actor(info: Info[Any, Any]) -> Actor:
    user: Actor = info.context.request.user
    return user


def user(info: Info[Any, Any]) -> User:
    """The authenticated user, or raise `unauthenticated`."""
    return require_user(actor(info))


def token(info: Info[Any, Any]) -> str | None:
    return getattr(info.context.request, "auth_token", None)


def client_address(info: Info[Any, Any]) -> str:
    return str(info.context.request.META.get("REMOTE_ADDR", ""))


def resolve_user(raw_token: str | None) -> User | AnonymousUser:
    return token_user(raw_token) or AnonymousUser()

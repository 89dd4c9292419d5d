"""Who is calling: the bearer token is the only credential the GraphQL API accepts.

Session cookies are ignored here on purpose: the HTTP endpoint is exempt from CSRF checks,
which is only safe when no ambient credential can authenticate a request (STACK.md trap 7).
Over WebSocket the token comes from the `connection_init` payload (schema/consumers.py).
"""

from typing import Any

import strawberry
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from strawberry.types import Info

from identity.auth import token_user
from identity.models import User
from identity.permissions import Actor, require_user


def _request(info: Info[Any, Any]) -> Any:
    ctx = info.context
    return ctx["request"] if isinstance(ctx, dict) else ctx.request


def actor(info: Info[Any, Any]) -> Actor:
    request = _request(info)
    user: Actor | None = getattr(request, "user", None)
    if user is None:  # a WebSocket consumer keeps the user in its scope
        user = request.scope.get("user") or AnonymousUser()
    return user


def user(info: Info[Any, Any]) -> User:
    """The authenticated user, or raise `unauthenticated`."""
    return require_user(actor(info))


def token(info: Info[Any, Any]) -> str | None:
    return getattr(_request(info), "auth_token", None)


def client_address(info: Info[Any, Any]) -> str:
    """The caller's address. Behind NUM_PROXIES reverse proxies it is the address the
    outermost trusted proxy saw, taken from the right of X-Forwarded-For (entries further
    left are whatever the client chose to send)."""
    meta = _request(info).META
    proxies = settings.NUM_PROXIES
    forwarded = [a.strip() for a in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if a.strip()]
    if proxies and forwarded:
        return forwarded[-min(proxies, len(forwarded))]
    return str(meta.get("REMOTE_ADDR", ""))


def resolve_user(raw_token: str | None) -> User | AnonymousUser:
    return token_user(raw_token) or AnonymousUser()


def given(value: Any) -> Any:
    """An optional input field: UNSET and null both mean "leave as it is"."""
    return None if value is strawberry.UNSET else value

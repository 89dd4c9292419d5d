"""Who is calling: the bearer token is the only credential the GraphQL API accepts.

Session cookies are ignored here on purpose: the HTTP endpoint is exempt from CSRF checks,
which is only safe when no ambient credential can authenticate a request (STACK.md trap 7).
Over WebSocket the token comes from the `connection_init` payload (schema/consumers.py) and is
re-resolved while the socket is open (`socket_user`).
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

import strawberry
from asgiref.sync import sync_to_async
from django.contrib.auth.models import AnonymousUser
from strawberry.types import Info

from delivery.live import recheck_interval
from identity import secrets
from identity.auth import token_user
from identity.models import User
from identity.permissions import Actor, require_user
from identity.throttle import address_from_meta


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
    """The caller's address as the login throttle counts it (NUM_PROXIES aware)."""
    return address_from_meta(_request(info).META)


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Recent(Generic[K, V]):
    """Answers shared by every caller in this process for `recheck_interval()` seconds (from
    when they were asked), concurrent callers sharing one computation: many sockets with one
    token or user cost one database read per interval, not one each. Failures are not kept."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._entries: dict[K, tuple[asyncio.AbstractEventLoop, float, asyncio.Future[V]]] = {}

    async def get(self, key: K, compute: Callable[[], Awaitable[V]]) -> V:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        entry = self._entries.get(key)
        if (
            entry is None
            or entry[0] is not loop
            or now - entry[1] >= recheck_interval()
            or (entry[2].done() and (entry[2].cancelled() or entry[2].exception() is not None))
        ):
            if len(self._entries) >= self._size:
                self._entries.clear()
            entry = (loop, now, asyncio.ensure_future(compute()))
            self._entries[key] = entry
        return await asyncio.shield(entry[2])


_socket_users: Recent[str, User | None] = Recent()


async def socket_user(raw_token: str | None) -> User | None:
    """The active user owning the unexpired token, as the database said at most
    `recheck_interval()` ago (one read per token and interval in this process), or None."""
    if not raw_token:
        return None
    return await _socket_users.get(
        secrets.digest(raw_token), lambda: sync_to_async(token_user)(raw_token)
    )


def resolve_user(raw_token: str | None) -> User | AnonymousUser:
    return token_user(raw_token) or AnonymousUser()


def given(value: Any) -> Any:
    """An optional input field: UNSET and null both mean "leave as it is"."""
    return None if value is strawberry.UNSET else value

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
from identity.auth import token_user, token_users
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
    """Answers shared by every caller in this process within one window of
    `recheck_interval()` seconds, and computed in batches: every key asked for in the same
    moment (the live streams re-check together, on the hub's tick) is loaded by one call of
    `load(keys) -> {key: value}`, so many sockets of many users cost one database read per
    interval, not one per socket or user. An answer is at most one interval old. Failures are
    not kept."""

    def __init__(
        self, load: Callable[[list[K]], Awaitable[dict[K, V]]], size: int = 10_000
    ) -> None:
        self._load = load
        self._size = size
        self._entries: dict[K, tuple[asyncio.AbstractEventLoop, int, asyncio.Future[V]]] = {}
        self._open: tuple[asyncio.AbstractEventLoop, dict[K, asyncio.Future[V]]] | None = None
        self._batches: set[asyncio.Task[None]] = set()

    async def get(self, key: K) -> V:
        loop = asyncio.get_running_loop()
        window = int(time.monotonic() // recheck_interval())
        entry = self._entries.get(key)
        if (
            entry is None
            or entry[0] is not loop
            or entry[1] != window
            or (entry[2].done() and (entry[2].cancelled() or entry[2].exception() is not None))
        ):
            if self._open is None or self._open[0] is not loop:  # no batch is collecting
                self._open = (loop, {})
                task = loop.create_task(self._run(self._open[1]))
                self._batches.add(task)
                task.add_done_callback(self._batches.discard)
            batch = self._open[1]
            future = batch.get(key)
            if future is None:
                future = batch[key] = loop.create_future()
            if len(self._entries) >= self._size:
                self._entries.clear()
            entry = self._entries[key] = (loop, window, future)
        return await asyncio.shield(entry[2])

    async def _run(self, batch: dict[K, asyncio.Future[V]]) -> None:
        await asyncio.sleep(BATCH_SECONDS)  # the others of this moment join
        if self._open is not None and self._open[1] is batch:
            self._open = None  # keys asked from now on go to the next batch
        try:
            values = await self._load(list(batch))
        except Exception as error:
            for future in batch.values():
                if not future.done():
                    future.set_exception(error)
            return
        for key, future in batch.items():
            if not future.done():
                future.set_result(values[key])


# How long a batch waits for more keys: callers of one moment (a tick) arrive within it.
BATCH_SECONDS = 0.005


async def _load_users(digests: list[str]) -> dict[str, User | None]:
    return await sync_to_async(token_users)(digests)


_socket_users: Recent[str, User | None] = Recent(_load_users)


async def socket_user(raw_token: str | None) -> User | None:
    """The active user owning the unexpired token, as the database said at most
    `recheck_interval()` ago (one read per interval for all the tokens asked about in this
    process at once), or None."""
    if not raw_token:
        return None
    return await _socket_users.get(secrets.digest(raw_token))


def resolve_user(raw_token: str | None) -> User | AnonymousUser:
    return token_user(raw_token) or AnonymousUser()


def given(value: Any) -> Any:
    """An optional input field: UNSET and null both mean "leave as it is"."""
    return None if value is strawberry.UNSET else value

"""Who is calling: the bearer token is the only credential the GraphQL API accepts.

Session cookies are ignored here on purpose: the HTTP endpoint is exempt from CSRF checks,
which is only safe when no ambient credential can authenticate a request (STACK.md trap 7).
Over WebSocket the token comes from the `connection_init` payload (schema/consumers.py) and is
re-resolved while the socket is open (`socket_user`).
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable
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

logger = logging.getLogger(__name__)


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
D = TypeVar("D")
_MISSING: Any = object()


class Recent(Generic[K, V]):
    """Answers shared by every caller in this process, at most `recheck_interval()` seconds
    old (counted from the start of the load that gave them), loaded in batches and ahead of
    time. Every key asked for in the same moment is loaded by one call of
    `load(keys) -> {key: value}`; then, while keys are being asked for, a refresher task
    reloads all of them together every half interval, so a caller finds a fresh answer and
    returns it without suspending: 1,000 streams re-checking on the same tick cost one load
    per half interval and no wait each, instead of 1,000 waits on a load that a new window
    started. A key not asked for during two intervals is no longer refreshed. Failures are
    not kept: once its answer is too old, a caller waits for a load of its own, which raises."""

    def __init__(
        self, load: Callable[[list[K]], Awaitable[dict[K, V]]], size: int = 10_000
    ) -> None:
        self._load = load
        self._size = size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fresh: dict[K, tuple[float, V]] = {}  # key -> (its load's start, answer)
        self._asked: dict[K, float] = {}  # key -> when it was last asked for
        self._open: dict[K, asyncio.Future[V]] | None = None  # the batch collecting keys
        self._tasks: set[asyncio.Task[None]] = set()
        self._refreshing = False

    def peek(self, key: K, default: D) -> V | D:
        """The answer for `key` if there is one fresh enough, else `default` (then `get` it);
        either way `key` counts as asked for, so it is refreshed."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # answers and tasks belong to one event loop
            self._loop, self._open, self._refreshing = loop, None, False
            self._fresh.clear()
            self._asked.clear()
        now = time.monotonic()
        self._asked[key] = now
        found = self._fresh.get(key)
        if found is not None and now - found[0] <= recheck_interval():
            return found[1]
        return default

    async def get(self, key: K) -> V:
        found = self.peek(key, _MISSING)
        if found is not _MISSING:
            return found
        loop = asyncio.get_running_loop()
        if self._open is None:  # no batch is collecting
            self._open = {}
            self._spawn(loop, self._run(self._open))
        future = self._open.get(key)
        if future is None:
            future = self._open[key] = loop.create_future()
        if not self._refreshing:
            self._refreshing = True
            self._spawn(loop, self._refresh())
        return await asyncio.shield(future)

    def _spawn(self, loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, None]) -> None:
        task = loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _keep(self, started: float, values: dict[K, V]) -> None:
        if len(self._fresh) >= self._size:
            self._fresh.clear()
        for key, value in values.items():
            kept = self._fresh.get(key)
            if kept is None or kept[0] <= started:
                self._fresh[key] = (started, value)

    async def _run(self, batch: dict[K, asyncio.Future[V]]) -> None:
        await asyncio.sleep(BATCH_SECONDS)  # the others of this moment join
        if self._open is batch:
            self._open = None  # keys asked from now on go to the next batch
        started = time.monotonic()
        try:
            values = await self._load(list(batch))
        except Exception as error:
            for future in batch.values():
                if not future.done():
                    future.set_exception(error)
            return
        self._keep(started, values)
        for key, future in batch.items():
            if not future.done():
                future.set_result(values[key])

    async def _refresh(self) -> None:
        """Every half interval, reload the keys asked for during the last two intervals
        (callers re-check every interval, a little late on a busy loop); end when there are
        none."""
        try:
            while True:
                interval = recheck_interval()
                await asyncio.sleep(interval / 2)
                now = time.monotonic()
                for key in [k for k, at in self._asked.items() if now - at > 2 * interval]:
                    del self._asked[key]
                    self._fresh.pop(key, None)
                if not self._asked:
                    return
                started = time.monotonic()
                try:
                    values = await self._load(list(self._asked))
                except Exception:  # the answers age out; their callers' own loads will raise
                    logger.warning("Refreshing live re-check answers failed", exc_info=True)
                    continue
                self._keep(started, values)
        finally:
            self._refreshing = False


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


def peek_socket_user(raw_token: str | None, default: D) -> User | D | None:
    """`socket_user(raw_token)` if the process has a fresh answer, else `default` (without
    waiting: then ask `socket_user`)."""
    if not raw_token:
        return None
    return _socket_users.peek(secrets.digest(raw_token), default)


def resolve_user(raw_token: str | None) -> User | AnonymousUser:
    return token_user(raw_token) or AnonymousUser()


def given(value: Any) -> Any:
    """An optional input field: UNSET and null both mean "leave as it is"."""
    return None if value is strawberry.UNSET else value

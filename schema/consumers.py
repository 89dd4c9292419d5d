"""GraphQL over WebSocket (`graphql-transport-ws` only: the legacy `graphql-ws` subprotocol is
not offered, see STACK.md trap 9 and CVE-2026-35523).

Only subscriptions are served over the socket; queries and mutations go to POST /graphql/,
where every request is authenticated on its own. An open socket stays authorized as of now: a
watchdog re-resolves its token every `recheck_interval()` and closes the socket (4403) once the
token is revoked or expired or its user deactivated, and streams re-check memberships
themselves (delivery/live.py)."""

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import AsyncGenerator
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from graphql import GraphQLError, OperationType, get_operation_ast, parse
from strawberry.channels import GraphQLWSConsumer
from strawberry.channels.handlers.ws_handler import ChannelsWebSocketAdapter
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage,
    SubscribeMessage,
)
from strawberry.types.unset import UNSET, UnsetType

from delivery import live
from identity.auth import token_from_header
from identity.errors import ErrorCode
from schema.context import peek_socket_user, socket_user
from schema.subscriptions import live_operation

logger = logging.getLogger(__name__)

OPERATION_NOT_ALLOWED = ErrorCode.OPERATION_NOT_ALLOWED.value
NOT_A_SUBSCRIPTION = (
    "Only subscriptions are served over the WebSocket; send queries and mutations to "
    "POST /graphql/."
)
# A token that is not valid at connection_init: 4401, which graphql-ws and Apollo Client treat
# as fatal (they do not retry the same token). One that stops being valid on an open socket:
# 4403, which they retry (a client whose connectionParams fetch a fresh token gets back in).
TOKEN_REFUSED = (4401, "Invalid, expired or revoked token")
TOKEN_INVALID = (4403, "Token revoked or expired")
INTERRUPTED = (1012, "Live updates interrupted: reconnect and resume with after")
TOO_MANY = (4429, "Too many open connections")
TOO_DEEP = (4400, "WebSocket message nested too deeply")
# Deeper JSON than any operation of ours needs; deeper still would exhaust the stack.
MAX_MESSAGE_DEPTH = 64


class SocketRejected(Exception):
    """Refuse a `connection_init` with this close code and reason (strawberry's own
    ConnectionRejectionError always closes with 4403 Forbidden)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _is_subscription(query: object, operation_name: object) -> bool | None:
    """Whether the operation to run is a subscription; None when the document does not say
    (unparsable, ambiguous): strawberry then answers as it always does."""
    if not isinstance(query, str) or not isinstance(operation_name, str | None):
        return None
    try:
        document = parse(query, no_location=True, max_tokens=settings.GRAPHQL_MAX_TOKENS)
    except (GraphQLError, RecursionError):
        return None
    operation = get_operation_ast(document, operation_name)
    return None if operation is None else operation.operation == OperationType.SUBSCRIPTION


def _depth(value: object) -> int:
    """Nesting depth of decoded JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_MESSAGE_DEPTH:
                break
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


class _Adapter(ChannelsWebSocketAdapter):
    async def iter_json(self, *, ignore_parsing_errors: bool = False) -> AsyncGenerator[object]:
        """Messages nested too deeply to decode or handle close the socket (4400) instead of
        killing the handler, which would leave the socket open and deaf."""
        try:
            async for message in super().iter_json(ignore_parsing_errors=ignore_parsing_errors):
                if _depth(message) > MAX_MESSAGE_DEPTH:
                    await self.close(*TOO_DEEP)
                    return
                yield message
        except RecursionError:
            await self.close(*TOO_DEEP)


class _Handler(BaseGraphQLTransportWSHandler[None, None]):
    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        try:
            await super().handle_connection_init(message)
        except SocketRejected as rejected:
            await self.websocket.close(code=rejected.code, reason=rejected.reason)

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        payload: Any = message.get("payload")
        if (
            self.connection_acknowledged
            and isinstance(payload, dict)
            and message.get("id") not in self.operations
            and _is_subscription(payload.get("query"), payload.get("operationName")) is False
        ):
            error = GraphQLError(NOT_A_SUBSCRIPTION, extensions={"code": OPERATION_NOT_ALLOWED})
            await self.send_message(
                {"id": message["id"], "type": "error", "payload": [error.formatted]}
            )
            return
        # The operation's task (created by the handler) sees which operation it runs.
        live_operation.set((self, message.get("id")))
        await super().handle_subscribe(message)


# --- Open sockets per user: WS_MAX_CONNECTIONS_PER_USER slots in the (shared) cache ----------

# A slot not refreshed for this long is free again (its process died without releasing it).
SLOT_TTL_SECONDS = 60.0
SLOT_REFRESH_SECONDS = SLOT_TTL_SECONDS / 3


def _slot_keys(user_id: object) -> list[str]:
    return [f"ws-slot:{user_id}:{i}" for i in range(settings.WS_MAX_CONNECTIONS_PER_USER)]


def slot_acquire(user_id: object, owner: str) -> str | None:
    """Take one of the user's free slots (an atomic `add`, so concurrent sockets in any process
    never share one); its key, or None when every slot is taken."""
    keys = _slot_keys(user_id)
    taken = cache.get_many(keys)
    for key in keys:
        if key not in taken and cache.add(key, owner, timeout=SLOT_TTL_SECONDS):
            return key
    return None


def slots_refresh(slots: list[tuple[str, str]]) -> None:
    """Keep these (key, owner) slots alive: two cache round trips for all of them, plus one
    per slot that expired meanwhile (taken back if it is still free)."""
    held = cache.get_many([key for key, _owner in slots])
    ours = {key: owner for key, owner in slots if held.get(key) == owner}
    cache.set_many(ours, timeout=SLOT_TTL_SECONDS)
    for key, owner in slots:
        if key not in ours:
            cache.add(key, owner, timeout=SLOT_TTL_SECONDS)


def slot_release(key: str, owner: str) -> None:
    if cache.get(key) == owner:
        cache.delete(key)


def _payload_token(params: object) -> str | None:
    """The token of a `connection_init` payload: {"authToken": "<token>"}, or the same
    `Authorization: Bearer <token>` that queries send, as a payload key (any case; GraphiQL
    and most clients send their headers so) or under "headers"."""
    if not isinstance(params, dict):
        return None
    raw = params.get("authToken")
    if isinstance(raw, str) and raw:
        return raw
    for scope in (params, params.get("headers")):
        if isinstance(scope, dict):
            for key, value in scope.items():
                if (
                    isinstance(key, str)
                    and key.lower() == "authorization"
                    and isinstance(value, str)
                ):
                    return token_from_header(value)
    return None


class LiveConsumer(GraphQLWSConsumer):
    """Authenticates from `connection_init` {"authToken": "<token>"} or {"Authorization":
    "Bearer <token>"} (also under "headers"), or an `Authorization: Bearer` header on the
    upgrade request; a bad, expired or revoked token closes the socket with 4401 ("Invalid,
    expired or revoked token": clients do not retry it), and the watchdog closes it with 4403
    ("Token revoked or expired") once it stops being valid. More than
    WS_MAX_CONNECTIONS_PER_USER open sockets of a user: 4429. Browser origins other than the
    server's own must be listed in WS_ALLOWED_ORIGINS."""

    graphql_transport_ws_handler_class = _Handler
    websocket_adapter_class = _Adapter
    # No channel-layer channel per socket: live streams read the layer through their process's
    # hub (delivery/live.py), and nothing is sent to a socket's own channel. With one, every
    # socket kept a receive pending on the layer (with channels_redis, 1,000 sockets were
    # 1,000 receivers taking turns on its receive lock for every message of the hub's channel).
    channel_layer_alias = "(none: live streams use the process hub)"
    auth_token: str | None = None
    _slot: tuple[str, str] | None = None  # (cache key, owner)

    @classmethod
    def build(cls, schema: Any) -> Any:
        return cls.as_asgi(
            schema=schema,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            allowed_origins=settings.WS_ALLOWED_ORIGINS,
            connection_init_wait_timeout=timedelta(seconds=10),
        )

    async def connect(self) -> None:
        offered = self.scope.get("subprotocols", [])
        if GRAPHQL_TRANSPORT_WS_PROTOCOL not in offered:
            # Before accept: the handshake is refused (HTTP 403), which cannot carry a reason.
            logger.warning(
                "WebSocket refused: subprotocols %s offered; only %s is served (the legacy "
                "graphql-ws protocol of subscriptions-transport-ws is not)",
                offered or "none",
                GRAPHQL_TRANSPORT_WS_PROTOCOL,
            )
            await self.close()
            return
        await super().connect()

    async def disconnect(self, code: int) -> None:
        _watchdog().sockets.discard(self)
        if self.run_task is not None:
            await super().disconnect(code)
        if self._slot is not None:
            slot, self._slot = self._slot, None
            await sync_to_async(slot_release)(*slot)

    async def on_ws_connect(self, context: Any) -> UnsetType | dict[str, object] | None:
        raw = _payload_token(context.get("connection_params"))
        if not raw:
            headers = dict(self.scope.get("headers", []))
            raw = token_from_header(headers.get(b"authorization", b"").decode("latin1"))
        user = await socket_user(raw)
        if user is None:
            raise SocketRejected(*TOKEN_REFUSED)
        owner = uuid.uuid4().hex
        slot = await sync_to_async(slot_acquire)(user.pk, owner)
        if slot is None:
            raise SocketRejected(*TOO_MANY)
        self._slot = (slot, owner)
        self.scope["user"] = user
        self.auth_token = raw
        # Lets worker threads of this process reach the in-memory channel layer (embedded).
        live.bind_server_loop(asyncio.get_running_loop())
        _watchdog().add(self)
        return UNSET

    async def _shut(self, code: int, reason: str) -> None:
        await self.close(code=code, reason=reason)
        # End the handler and its operations now, not when the client acknowledges the close.
        self.message_queue.put_nowait({"message": None, "disconnected": True})


class _Watchdog:
    """The re-checks of every open socket of one event loop, by one task: every
    `recheck_interval()` each socket's token is resolved again (socket_user: answers shared by
    the process and refreshed ahead, so this waits on the database only for tokens it has not
    seen lately) and the fresh user kept in the socket's scope (roles and superuser status as
    of now); a socket whose token is revoked or expired, or whose user is deactivated, is
    closed with 4403. Every SLOT_REFRESH_SECONDS the sockets' slots are kept alive in one
    batch. One timer for 1,000 sockets instead of one each."""

    def __init__(self) -> None:
        self.sockets: set[LiveConsumer] = set()
        self.task: asyncio.Task[None] | None = None
        live.on_interruption(self.interrupted)

    def interrupted(self) -> None:
        """The process's live streams may have missed changes: close every socket with 1012
        (clients reconnect, and resume with `after` without a gap)."""
        for socket in list(self.sockets):
            self._close(socket, *INTERRUPTED)

    def add(self, socket: "LiveConsumer") -> None:
        self.sockets.add(socket)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        refreshed = time.monotonic()
        while self.sockets:
            await asyncio.sleep(live.recheck_interval())
            sockets = list(self.sockets)
            unknown = []
            for socket in sockets:
                user = peek_socket_user(socket.auth_token, _UNKNOWN)
                if user is _UNKNOWN:
                    unknown.append(socket)
                else:
                    self._apply(socket, user)
            if unknown:  # tokens not seen lately: one batched read for all of them
                users = await asyncio.gather(
                    *(socket_user(s.auth_token) for s in unknown), return_exceptions=True
                )
                for socket, user in zip(unknown, users, strict=True):
                    self._apply(socket, user)
            if time.monotonic() - refreshed >= SLOT_REFRESH_SECONDS:
                refreshed = time.monotonic()
                slots = [s._slot for s in sockets if s._slot is not None and s in self.sockets]
                try:
                    await sync_to_async(slots_refresh)(slots)
                except Exception:  # the slots live on until their TTL; retried next time
                    logger.warning("Refreshing WebSocket slots failed", exc_info=True)

    def _apply(self, socket: "LiveConsumer", user: object) -> None:
        if socket not in self.sockets:
            return  # disconnected meanwhile
        if isinstance(user, BaseException):  # cannot tell whether the token is still valid
            logger.error("WebSocket authorization check failed", exc_info=user)
            self._close(socket, 1011, "Authorization check failed")
        elif user is None:
            self._close(socket, *TOKEN_INVALID)
        else:
            socket.scope["user"] = user

    def _close(self, socket: "LiveConsumer", code: int, reason: str) -> None:
        self.sockets.discard(socket)
        task = asyncio.get_running_loop().create_task(socket._shut(code, reason))
        _closing.add(task)
        task.add_done_callback(_closing.discard)


_UNKNOWN: Any = object()
_closing: set[asyncio.Task[None]] = set()
_watchdogs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchdog]" = (
    weakref.WeakKeyDictionary()
)


def _watchdog() -> _Watchdog:
    """The watchdog of the running event loop."""
    loop = asyncio.get_running_loop()
    found = _watchdogs.get(loop)
    if found is None:
        found = _watchdogs[loop] = _Watchdog()
    return found

"""The only module that knows the channel-layer group names and message format.

A message carries each changed log's own fields as they were after the change (and its event's
CL-X-EVENT-ID when the publisher has the event at hand): a subscriber that selects only those
reads no row; one that selects more (attempts, the payload, the destination) reloads the rows
once per message in each process. The channel layer is at-most-once (Redis pub/sub keeps
nothing for a process that is not connected), so clients catch up from the database after a
reconnect.
"""

import asyncio
import base64
import binascii
import contextlib
import copy
import logging
import os
import threading
import time
import uuid
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from channels_redis.utils import _consistent_hash, decode_hosts
from django.conf import settings
from django.db.models import Q
from django.dispatch import receiver
from django.test.signals import setting_changed

from delivery.models import DeliveryLog, Event, Notice
from delivery.selectors import LogFilters, apply_log_filters, log_matches
from identity.errors import ErrorCode, NotFound, Unauthenticated, invalid
from identity.ids import parse_pk

logger = logging.getLogger(__name__)

MESSAGE_TYPE = "log.updates"

# The event loop of the ASGI server in this process. With the in-memory layer (embedded mode)
# messages must be put on the layer from that loop: its queues are not thread-safe.
_server_loop: asyncio.AbstractEventLoop | None = None


def bind_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    global _server_loop
    _server_loop = loop


def group_name(account_id: object) -> str:
    return f"logs.{account_id}"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# --- Where a change stands: (updated_at, id), the order of the catch-up ---------------------

Position = tuple[datetime, int]
# After every log changed at a moment: `since` is exclusive, so (since, AFTER_ALL) skips the
# logs changed exactly then (ids are positive 64-bit integers).
AFTER_ALL = 2**63 - 1


def cursor(updated_at: datetime, log_id: int) -> str:
    """DeliveryLog.cursor: an opaque text of the change's position in the catch-up order."""
    raw = f"{updated_at.astimezone(UTC).isoformat()}|{log_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def parse_cursor(text: str) -> Position:
    """The position a `cursor()` text names; a ValidationError (invalid_cursor) otherwise."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        moment, _, log_id = raw.partition("|")
        at = datetime.fromisoformat(moment)
        if at.tzinfo is None or not 0 < int(log_id) <= AFTER_ALL:
            raise ValueError(raw)
        return at, int(log_id)
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise invalid(
            ErrorCode.INVALID_CURSOR,
            "`after` is not a cursor: pass a DeliveryLog.cursor as you received it.",
        ) from error


def _position(update: dict[str, Any]) -> Position | None:
    at = update.get("updated_at")
    return None if at is None else (datetime.fromisoformat(at), update["log_id"])


def log_message(log: DeliveryLog) -> dict[str, Any]:
    """One change of `log`, as published: its scalar fields after the change, and `event`
    (the event's CL-X-EVENT-ID) when the log's event is loaded (never a query here)."""
    message = {
        "log_id": log.pk,
        "account_id": str(log.account_id),
        "destination_id": log.destination_id,
        "event_id": log.event_id,
        "status": str(log.status),
        "attempt_count": log.attempt_count,
        "updated_at": _iso(log.updated_at),
        "webhook_id": log.webhook_id,
        "received_timestamp": _iso(log.received_timestamp),
        "processed_timestamp": _iso(log.processed_timestamp),
        "next_attempt_at": _iso(log.next_attempt_at),
        "last_status_code": log.last_status_code,
        "last_error": log.last_error,
    }
    if DeliveryLog.event.is_cached(log):
        message["event"] = log.event.event_id
    return message


DESTINATION_MESSAGE = "destination.updates"


def destination_group(account_id: object) -> str:
    return f"destinations.{account_id}"


def publish_destination(
    account_id: object, destination_id: int, notice_id: int | None = None
) -> None:
    """Tell the account's destinationUpdates subscribers that a destination's health changed:
    a recorded notice (`notice_id`, after its commit), or its figures. Never raises."""
    layer = get_channel_layer()
    if layer is None:
        return
    message = {
        "type": DESTINATION_MESSAGE,
        "account_id": str(account_id),
        "destination_id": destination_id,
        "notice_id": notice_id,
    }
    try:
        _group_send(layer, destination_group(account_id), message)
    except Exception:
        logger.warning("Destination update for account %s not published", account_id, exc_info=True)


def publish_log_update(log: DeliveryLog) -> None:
    """Tell the account's subscribers that `log` changed. Call after commit."""
    publish([log])


def publish(logs: Iterable[DeliveryLog], *, earlier: Iterable[dict[str, Any]] = ()) -> None:
    """One message per account for a batch of changed logs, after the `earlier` changes
    (log_message of changes not yet published, e.g. a claim's). Never raises: live status is
    best-effort, the database stays the source of truth."""
    by_account: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for update in [*earlier, *map(log_message, logs)]:
        by_account[update["account_id"]].append(update)
    if not by_account:
        return
    layer = get_channel_layer()
    if layer is None:
        return
    for account_id, updates in by_account.items():
        message = {"type": MESSAGE_TYPE, "updates": updates}
        try:
            _group_send(layer, group_name(account_id), message)
        except Exception:
            logger.warning("Live update for account %s not published", account_id, exc_info=True)


def _group_send(layer: Any, group: str, message: dict[str, Any]) -> None:
    message["group"] = group  # for the receiving hubs (_Hub), which share one channel
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if isinstance(layer, InMemoryChannelLayer):
        loop = _server_loop
        if loop is None or loop.is_closed():
            return  # nobody in this process can be subscribed
        if running is loop:
            loop.create_task(layer.group_send(group, message))
        else:
            asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop)
        return
    if running is not None:  # async caller: never block its loop
        running.create_task(layer.group_send(group, message))
        return
    if (sender := _redis_sender(layer)) is not None:
        sender.group_send(group, message)
        return
    # Other sync callers share one long-lived loop, so the layer keeps one Redis connection
    # pool; async_to_sync would make a new loop, and a new connection, per call. Waiting for
    # the send keeps the changes of one log in order.
    asyncio.run_coroutine_threadsafe(layer.group_send(group, message), _publisher_loop()).result(
        timeout=PUBLISH_TIMEOUT
    )


PUBLISH_TIMEOUT = 5.0


class _RedisPublisher:
    """`RedisPubSubChannelLayer.group_send` for sync callers (tasks, views): one PUBLISH of the
    layer's own bytes to the layer's own Redis channel for the group, on a sync client. The
    layer's asyncio send needs an event loop; handing each send to a loop thread and back cost
    more CPU on the delivery path than the rest of the publish."""

    def __init__(self, layer: RedisPubSubChannelLayer, hosts: list[dict[str, Any]]) -> None:
        import redis

        self.layer = layer
        self.prefix = layer._kwargs.get("prefix", "asgi")
        self.clients = []
        for host in hosts:
            options = dict(host)
            self.clients.append(redis.Redis.from_url(options.pop("address"), **options))

    def group_send(self, group: str, message: dict[str, Any]) -> None:
        channel = f"{self.prefix}__group__{group}"  # RedisPubSubLoopLayer's group channel
        client = self.clients[_consistent_hash(channel, len(self.clients))]
        client.publish(channel, self.layer.serialize(message))


_senders: "weakref.WeakKeyDictionary[Any, tuple[int, _RedisPublisher | None]]" = (
    weakref.WeakKeyDictionary()
)  # layer -> (pid, its sender)
_senders_lock = threading.Lock()


def _redis_sender(layer: Any) -> _RedisPublisher | None:
    """The sync sender of a channels_redis pub/sub layer whose hosts are Redis URLs (per
    process); None for other layers, which go through the publisher loop."""
    entry = _senders.get(layer)
    if entry is None or entry[0] != os.getpid():
        with _senders_lock:
            sender = None
            if isinstance(layer, RedisPubSubChannelLayer):
                hosts = decode_hosts(layer._kwargs.get("hosts"))
                if all("address" in host for host in hosts):
                    sender = _RedisPublisher(layer, hosts)
            _senders[layer] = entry = (os.getpid(), sender)
    return entry[1]


_publisher: tuple[int, asyncio.AbstractEventLoop] | None = None
_publisher_lock = threading.Lock()


def _publisher_loop() -> asyncio.AbstractEventLoop:
    global _publisher
    with _publisher_lock:
        if _publisher is None or _publisher[0] != os.getpid() or _publisher[1].is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="live-publisher", daemon=True).start()
            _publisher = (os.getpid(), loop)
        return _publisher[1]


# --- Subscriber side ------------------------------------------------------------------------


_recheck: float | None = None  # read once: every subscriber asks at every message


def recheck_interval() -> float:
    """How often a live stream re-checks access, and how long a shared access answer may be
    reused: half of LIVE_RECHECK_SECONDS, so that a change behind a reused answer is still acted
    on within LIVE_RECHECK_SECONDS."""
    global _recheck
    if _recheck is None:
        _recheck = settings.LIVE_RECHECK_SECONDS / 2
    return _recheck


@receiver(setting_changed)
def _forget_recheck(*, setting: str, **kwargs: Any) -> None:
    global _recheck
    if setting == "LIVE_RECHECK_SECONDS":
        _recheck = None


GROUP_REFRESH_SECONDS = 60.0
_TICK: dict[str, Any] = {"type": "live.hub.tick"}  # time to re-check access


class _Hub:
    """The live streams' side of the channel layer in one process (and event loop): one
    channel that joins each group once, however many local streams listen to it, reads each
    message once and puts that same message on the queue of every local stream of its group.
    With a channel per socket, as strawberry's `listen_to_channel` does, one change to 1,000
    subscribers in a process is 1,000 messages to write, read and decode; here it is one.

    With channels_redis' pub/sub layer a group is one Redis subscription per process, and a
    message reaches the process in one push: no Redis command per message (its list-based layer
    spent four on each, and a busy process fell behind at a few hundred messages a second).
    A queue is unbounded: a stream that falls behind gets all it missed in its next batch
    (`_batches`), nothing is dropped in the process. A group is left when its last local stream
    ends, and the channel with the last one (its reader is cancelled: the layer unsubscribes);
    every group is joined again every GROUP_REFRESH_SECONDS (the in-memory layer forgets
    members after its group_expiry).
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.channel: str | None = None
        self.queues: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self.lock = asyncio.Lock()
        self.reader: asyncio.Task[None] | None = None
        self.ticker: asyncio.Task[None] | None = None
        self.watched: weakref.WeakSet[Any] = weakref.WeakSet()  # the layer's pub/sub connections

    @contextlib.asynccontextmanager
    async def listen(self, type: str, *, groups: Collection[str]) -> AsyncIterator["_Messages"]:
        """The messages of `type` sent to `groups` from the moment this returns (the groups
        are joined first), until the block ends."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        async with self.lock:
            if self.channel is None:
                self.channel = await self.layer.new_channel()
                self.reader = asyncio.ensure_future(self._read(self.channel))
                self.ticker = asyncio.ensure_future(self._tick())
            for group in groups:
                if not self.queues[group]:
                    await self.layer.group_add(group, self.channel)
                self.queues[group].add(queue)
            self._watch_connections()
        try:
            yield _Messages(queue, type)
        finally:
            left = []
            for group in groups:  # no await before the queue is out: safe under cancellation
                members = self.queues.get(group)
                if members is not None:
                    members.discard(queue)
                    if not members:
                        del self.queues[group]
                        left.append(group)
            channel, reader = self.channel, None
            if not self.queues:  # the last local stream: stop reading until the next one
                reader, self.channel, self.reader = self.reader, None, None
                if self.ticker is not None:
                    self.ticker.cancel()
            for group in left:
                with contextlib.suppress(Exception):
                    await self.layer.group_discard(group, channel)
            if reader is not None:
                reader.cancel()

    def _watch_connections(self) -> None:
        """Be told when a pub/sub connection of the layer connects again. Nothing to watch
        on the in-memory layer."""
        try:
            shards = self.layer._get_layer()._shards  # channels_redis' RedisPubSubLoopLayer
        except AttributeError:
            return
        for shard in shards:
            connection = getattr(getattr(shard, "_pubsub", None), "connection", None)
            if connection is not None and connection not in self.watched:
                self.watched.add(connection)
                connection.register_connect_callback(self._reconnected)  # kept weakly

    def _reconnected(self, connection: Any) -> None:
        """redis-py subscribes again by itself, but what was published while the connection
        was down is lost to this process's streams: tell the transport (it closes its
        sockets, clients resume with `after`)."""
        logger.warning("Live hub: the channel layer's connection came back; changes were lost")
        for interrupted in list(_interruption_handlers.get(asyncio.get_running_loop(), ())):
            interrupted()

    async def _read(self, channel: str) -> None:
        while True:
            try:
                message = await self.layer.receive(channel)
            except Exception:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the layer turned our cancellation into an error of its own
                logger.warning("Live hub: reading the channel layer failed", exc_info=True)
                await asyncio.sleep(1)
                continue
            for group in _groups_of(message):
                for queue in self.queues.get(group, ()):
                    queue.put_nowait(message)

    async def _tick(self) -> None:
        """Every recheck_interval(), a tick on every local stream's queue (one timer for the
        process, not one per stream and message); every GROUP_REFRESH_SECONDS, the groups
        joined again."""
        refreshed = time.monotonic()
        while True:
            await asyncio.sleep(recheck_interval())
            for queue in {q for queues in self.queues.values() for q in queues}:
                queue.put_nowait(_TICK)
            if time.monotonic() - refreshed >= GROUP_REFRESH_SECONDS:
                refreshed = time.monotonic()
                await self._join_all()

    async def _join_all(self) -> None:
        if self.channel is None:
            return
        for group in list(self.queues):
            with contextlib.suppress(Exception):
                await self.layer.group_add(group, self.channel)


class _Messages:
    """A stream's messages of one type from its queue (ticks skipped). An iterator, not an
    async generator: nothing to finalize when the stream's task ends while it waits."""

    def __init__(self, queue: asyncio.Queue[dict[str, Any]], type: str) -> None:
        self.queue, self.type = queue, type

    def __aiter__(self) -> "_Messages":
        return self

    async def __anext__(self) -> dict[str, Any]:
        while True:
            message = await self.queue.get()
            if message.get("type") == self.type:
                return message

    async def batches(self) -> AsyncGenerator[list[dict[str, Any]]]:
        """The messages in lists: each holds what arrived while the previous one was handled,
        so a stream that falls behind catches up with one database read for many messages
        instead of one per message; an empty list for the hub's ticks alone, so an idle stream
        still wakes up to re-check access."""
        queue = self.queue
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            yield [m for m in items if m.get("type") == self.type]


def _groups_of(message: dict[str, Any]) -> list[str]:
    """The group a message was sent to (set by `_group_send`), or for a message published
    without it (an older publisher) the groups its content belongs to."""
    if "group" in message:
        return [message["group"]]
    if message.get("type") == DESTINATION_MESSAGE:
        return [destination_group(message.get("account_id"))]
    return sorted({group_name(u.get("account_id")) for u in message.get("updates", ())})


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Hub]" = weakref.WeakKeyDictionary()
Handlers = list[Callable[[], None]]
_interruption_handlers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Handlers]" = (
    weakref.WeakKeyDictionary()
)


def on_interruption(handler: Callable[[], None]) -> None:
    """Call `handler` (on the running loop) whenever the live streams of this loop may have
    missed changes: the channel layer's connection dropped and came back. The transport
    closes its sockets then, so that clients resume with `after` and miss nothing."""
    _interruption_handlers.setdefault(asyncio.get_running_loop(), []).append(handler)


def listeners(group: str) -> int:
    """How many live streams of this process listen to `group` (the layer sees one channel)."""
    return sum(len(hub.queues.get(group, ())) for hub in list(_hubs.values()))


def listen(type: str, *, groups: Collection[str]) -> AbstractAsyncContextManager["_Messages"]:
    """The ListenFactory of the live streams: this process's hub on the running loop."""
    loop = asyncio.get_running_loop()
    layer = get_channel_layer()
    hub = _hubs.get(loop)
    if hub is None or hub.layer is not layer:
        hub = _hubs[loop] = _Hub(layer)
    return hub.listen(type, groups=groups)


# Ids of the accounts whose logs the caller may view now (of those asked for). Supplied by the
# transport, which knows who the caller is; raises Unauthenticated once the caller is not.
AccessCheck = Callable[[], Awaitable[Collection[str]]]
ListenFactory = Callable[..., AbstractAsyncContextManager["_Messages"]]

CATCH_UP_CHUNK = 500


def _load(log_ids: list[int]) -> dict[int, DeliveryLog]:
    logs = DeliveryLog.objects.select_related("event", "destination", "account").prefetch_related(
        "attempts"
    )
    return logs.in_bulk(log_ids)


# Per process, so that many subscribers cost one database read per message, not one each.
_loads: OrderedDict[tuple[Any, ...], tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = (
    OrderedDict()
)
SHARED_LOADS = 256


async def _load_shared(updates: list[dict[str, Any]]) -> dict[int, DeliveryLog]:
    """`_load` of the updated logs, shared by every subscriber handling the same message."""
    loop = asyncio.get_running_loop()
    key = tuple((u["log_id"], u["updated_at"]) for u in updates)
    entry = _loads.get(key)
    if entry is None or entry[0] is not loop:
        future = asyncio.ensure_future(sync_to_async(_load)([u["log_id"] for u in updates]))
        _loads[key] = entry = (loop, future)
        while len(_loads) > SHARED_LOADS:
            _loads.popitem(last=False)
    rows: dict[int, DeliveryLog] = await asyncio.shield(entry[1])
    return rows


def _catch_up_chunk(accounts: set[str], filters: LogFilters, after: Position) -> list[DeliveryLog]:
    logs = (
        DeliveryLog.objects.select_related("event", "destination", "account")
        .prefetch_related("attempts")
        .filter(account_id__in=accounts)
        .filter(Q(updated_at__gt=after[0]) | Q(updated_at=after[0], pk__gt=after[1]))
    )
    logs = apply_log_filters(logs, filters)
    return list(logs.order_by("updated_at", "pk")[:CATCH_UP_CHUNK])


# The keys of log_message besides `event`: a message without them (published by an older
# version) is reloaded.
_OWN_FIELDS = frozenset(
    (
        "log_id",
        "account_id",
        "destination_id",
        "event_id",
        "status",
        "attempt_count",
        "updated_at",
        "webhook_id",
        "received_timestamp",
        "processed_timestamp",
        "next_attempt_at",
        "last_status_code",
        "last_error",
    )
)


def _datetime(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _row(update: dict[str, Any]) -> DeliveryLog:
    """The log as one change's message describes it (never saved), with its event's id when
    the message has it."""
    log = DeliveryLog(
        pk=update["log_id"],
        account_id=uuid.UUID(update["account_id"]),
        destination_id=update["destination_id"],
        event_id=update["event_id"],
        status=update["status"],
        attempt_count=update["attempt_count"],
        updated_at=datetime.fromisoformat(update["updated_at"]),
        webhook_id=update["webhook_id"],
        received_timestamp=datetime.fromisoformat(update["received_timestamp"]),
        processed_timestamp=_datetime(update["processed_timestamp"]),
        next_attempt_at=_datetime(update["next_attempt_at"]),
        last_status_code=update["last_status_code"],
        last_error=update["last_error"],
    )
    if "event" in update:
        log.event = Event(
            pk=update["event_id"], account_id=log.account_id, event_id=update["event"]
        )
    return log


def _shared_row(update: dict[str, Any]) -> DeliveryLog:
    """`_row(update)`, built once for every local stream handed the same message by the hub
    (they only read it), marked as shared: `shared_results(row)` is where the GraphQL results
    of the row, which depend only on the row (its own fields), are kept for the other streams
    (schema.subscriptions.LiveExecutionContext)."""
    row: DeliveryLog | None = update.get("_row")
    if row is None:
        row = update["_row"] = _row(update)
        row._live_results = {}  # type: ignore[attr-defined]
    return row


def shared_results(row: object) -> dict[Any, Any] | None:
    """The results kept for a shared row (see `_shared_row`); None for any other object."""
    found: dict[Any, Any] | None = getattr(row, "_live_results", None)
    return found


def _may_match(update: dict[str, Any], filters: LogFilters) -> bool:
    """A cheap check on the message's own fields, so that rows are loaded only for changes
    that can match; `log_matches` on the loaded row decides."""
    if filters.destination_id is not None and str(update["destination_id"]) != str(
        parse_pk(filters.destination_id)
    ):
        return False
    return not filters.statuses or update["status"] in filters.statuses


class _Accounts:
    """The accounts a stream serves: those `access` allowed at the start, narrowed (never
    widened: a membership gained later has no joined group) at each re-check."""

    def __init__(self, access: AccessCheck, ids: set[str]) -> None:
        self.access, self.ids, self.checked = access, ids, time.monotonic()

    @classmethod
    async def start(cls, access: AccessCheck) -> "_Accounts":
        ids = set(await access())
        if not ids:
            raise NotFound("Account")
        return cls(access, ids)

    async def recheck(self) -> bool:
        """Ask `access` again once `recheck_interval()` has passed; False when the stream
        must end (no account left, or the caller is no longer authenticated)."""
        if time.monotonic() - self.checked < recheck_interval():
            return True
        try:
            self.ids &= set(await self.access())
        except Unauthenticated:
            return False
        self.checked = time.monotonic()
        return bool(self.ids)


@dataclass(frozen=True)
class DestinationChange:
    destination_id: int | None  # None: deleted since
    notice: Notice | None  # None: the health figures moved


def _notices_after(accounts: set[str], after: Position) -> list[Notice]:
    notices = Notice.objects.filter(account_id__in=accounts).filter(
        Q(at__gt=after[0]) | Q(at=after[0], pk__gt=after[1])
    )
    return list(notices.order_by("at", "pk")[:CATCH_UP_CHUNK])


async def destination_stream(
    *, access: AccessCheck, since: datetime | None, listen: ListenFactory
) -> AsyncIterator[DestinationChange]:
    """Every health change of the destinations of the accounts `access` allows: each notice
    (breaker opened or closed, disabled, re-enabled) and, at most once a second per
    destination, its figures. With `since`, first every notice recorded after `since` (not at
    it), then
    live changes, with no gap or duplicate at the seam (the groups are joined first). Access
    is re-checked as in `log_stream`. Changes of one destination that arrive together without
    a notice come as one."""
    allowed = await _Accounts.start(access)
    shown: set[int] = set()
    groups = [destination_group(a) for a in sorted(allowed.ids)]
    async with listen(DESTINATION_MESSAGE, groups=groups) as messages:
        if since is not None:
            position = (since, AFTER_ALL)
            while chunk := await sync_to_async(_notices_after)(allowed.ids, position):
                for notice in chunk:
                    shown.add(notice.pk)
                    yield DestinationChange(notice.destination_id, notice)
                position = (chunk[-1].at, chunk[-1].pk)
                if not await allowed.recheck():
                    return
        async with contextlib.aclosing(messages.batches()) as batches:
            async for batch in batches:
                if not await allowed.recheck():
                    return
                figures: set[int] = set()
                for message in batch:
                    notice_id = message["notice_id"]
                    if message["account_id"] not in allowed.ids or notice_id in shown:
                        continue
                    if notice_id is None:
                        if message["destination_id"] in figures:
                            continue
                        figures.add(message["destination_id"])
                        yield DestinationChange(message["destination_id"], None)
                        continue
                    found = await sync_to_async(Notice.objects.filter(pk=notice_id).first)()
                    if found is not None:
                        yield DestinationChange(found.destination_id, found)


async def log_stream(
    *,
    access: AccessCheck,
    filters: LogFilters,
    since: datetime | None,
    listen: ListenFactory,
    after: Position | None = None,
    own_fields: bool = False,
    event_ids: bool = False,
) -> AsyncIterator[DeliveryLog]:
    """Every status change of the matching logs, as DeliveryLog rows carrying the status of
    that change (so no transition is skipped even if the row has moved on since). `filters`
    are the `logs` query's (selectors.apply_log_filters / log_matches): a malformed id matches
    nothing.

    With `since` (a time) or `after` (a change's position, parse_cursor), first the current
    state of every matching log changed after it (strictly: not the log changed at `since`,
    nor the one at `after`), in (updated_at, id) order, then live changes; the groups are
    joined before the database is read, and a live change at or before the start, or older
    than or equal to what the catch-up already showed, is dropped, so there is no gap and no
    duplicate at the seam.

    With `own_fields` (the caller reads nothing of a row but the log's own fields, and the
    event's CL-X-EVENT-ID when `event_ids`), a live change is turned into a row from its
    message, without a database read, when the message carries what is needed.

    `access` is asked at the start (no account: raises NotFound) and again every
    `recheck_interval()`, also while no change arrives: an account no longer visible is
    dropped, and the stream ends when none is left or the caller is no longer authenticated."""
    allowed = await _Accounts.start(access)
    accounts, recheck = allowed.ids, allowed.recheck

    def from_message(update: dict[str, Any]) -> bool:
        return (
            own_fields
            and update.keys() >= _OWN_FIELDS
            and None not in (update["updated_at"], update["received_timestamp"])
            and ("event" in update or not (event_ids or filters.event_id is not None))
        )

    def seen(update: dict[str, Any]) -> bool:
        """Whether the client has this change already (the catch-up, or before its start)."""
        if (position := _position(update)) is None:
            return False
        if start is not None and position <= start:
            return True
        return update["log_id"] in shown and position[0] <= shown[update["log_id"]]

    start = after if after is not None else None if since is None else (since, AFTER_ALL)
    shown: dict[int, datetime] = {}
    async with listen(MESSAGE_TYPE, groups=[group_name(a) for a in sorted(accounts)]) as messages:
        if start is not None:
            position = start
            while chunk := await sync_to_async(_catch_up_chunk)(accounts, filters, position):
                for log in chunk:
                    shown[log.pk] = log.updated_at
                    yield log
                position = (chunk[-1].updated_at, chunk[-1].pk)
                if not await recheck():
                    return
        async with contextlib.aclosing(messages.batches()) as batches:
            async for batch in batches:
                if not await recheck():
                    return
                updates = [
                    u
                    for message in batch
                    for u in message["updates"]
                    if u["account_id"] in accounts and _may_match(u, filters) and not seen(u)
                ]
                if not updates:
                    continue
                served = [from_message(u) for u in updates]
                loads = [u for u, ok in zip(updates, served, strict=True) if not ok]
                logs = await _load_shared(loads) if loads else {}
                for update, ok in zip(updates, served, strict=True):
                    if ok:
                        row = _shared_row(update)
                    elif (shared := logs.get(update["log_id"])) is not None:
                        row = copy.copy(shared)  # other subscribers hold the same row
                        row.status = update["status"]
                        row.attempt_count = update["attempt_count"]
                        if (changed := _position(update)) is not None:
                            row.updated_at = changed[0]  # the change's own cursor
                    else:
                        continue
                    if log_matches(row, filters):
                        yield row

"""The only module that knows the channel-layer group names and message format.

Messages are small: ids, status and timestamps. Subscribers reload what they render. The
channel layer is at-most-once (it drops past its capacity), so clients catch up from the
database after a reconnect.
"""

import asyncio
import contextlib
import copy
import logging
import os
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Iterable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.db.models import Q

from delivery.models import DeliveryLog
from delivery.selectors import LogFilters, apply_log_filters, log_matches
from identity.errors import NotFound, Unauthenticated
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


def log_message(log: DeliveryLog) -> dict[str, Any]:
    return {
        "log_id": log.pk,
        "account_id": str(log.account_id),
        "destination_id": log.destination_id,
        "event_id": log.event_id,
        "status": str(log.status),
        "attempt_count": log.attempt_count,
        "updated_at": log.updated_at.isoformat() if log.updated_at else None,
    }


def publish_log_update(log: DeliveryLog) -> None:
    """Tell the account's subscribers that `log` changed. Call after commit."""
    publish([log])


def publish(logs: Iterable[DeliveryLog]) -> None:
    """One message per account for a batch of changed logs. Never raises: live status is
    best-effort, the database stays the source of truth."""
    by_account: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for log in logs:
        by_account[str(log.account_id)].append(log_message(log))
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
    # Sync callers (views, tasks) share one long-lived loop, so the layer keeps one Redis
    # connection pool; async_to_sync would make a new loop, and a new connection, per call.
    # Waiting for the send keeps the changes of one log in order.
    asyncio.run_coroutine_threadsafe(layer.group_send(group, message), _publisher_loop()).result(
        timeout=PUBLISH_TIMEOUT
    )


PUBLISH_TIMEOUT = 5.0
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


def recheck_interval() -> float:
    """How often a live stream re-checks access, and how long a shared access answer may be
    reused: half of LIVE_RECHECK_SECONDS, so that a change behind a reused answer is still acted
    on within LIVE_RECHECK_SECONDS."""
    interval: float = settings.LIVE_RECHECK_SECONDS / 2
    return interval


# Ids of the accounts whose logs the caller may view now (of those asked for). Supplied by the
# transport, which knows who the caller is; raises Unauthenticated once the caller is not.
AccessCheck = Callable[[], Awaitable[Collection[str]]]
ListenFactory = Callable[..., AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]]

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


def _catch_up_chunk(
    accounts: set[str], filters: LogFilters, after: tuple[datetime, int]
) -> list[DeliveryLog]:
    logs = (
        DeliveryLog.objects.select_related("event", "destination", "account")
        .prefetch_related("attempts")
        .filter(account_id__in=accounts)
        .filter(Q(updated_at__gt=after[0]) | Q(updated_at=after[0], pk__gt=after[1]))
    )
    logs = apply_log_filters(logs, filters)
    return list(logs.order_by("updated_at", "pk")[:CATCH_UP_CHUNK])


def _may_match(update: dict[str, Any], filters: LogFilters) -> bool:
    """A cheap check on the message's own fields, so that rows are loaded only for changes
    that can match; `log_matches` on the loaded row decides."""
    if filters.destination_id is not None and str(update["destination_id"]) != str(
        parse_pk(filters.destination_id)
    ):
        return False
    return not filters.statuses or update["status"] in filters.statuses


async def _batches(
    messages: AsyncIterator[dict[str, Any]], interval: float
) -> AsyncGenerator[list[dict[str, Any]]]:
    """`messages` in lists: each list holds what arrived while the previous one was handled,
    so a subscriber that falls behind catches up with one database read for many messages
    instead of one per message; and an empty list whenever `interval` seconds pass without a
    message, so an idle stream still wakes up to re-check access. The channel is read by a
    task of its own, never cancelled by a tick (that would end the channel's generator)."""
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def read() -> None:
        try:
            async for message in messages:
                queue.put_nowait(message)
        finally:
            queue.put_nowait(None)  # the channel ended

    reader = asyncio.ensure_future(read())
    try:
        while True:
            try:
                first = await asyncio.wait_for(queue.get(), timeout=interval)
            except TimeoutError:
                yield []
                continue
            batch = [first]
            while not queue.empty():
                batch.append(queue.get_nowait())
            if None in batch:
                if ready := [m for m in batch[: batch.index(None)] if m is not None]:
                    yield ready
                return
            yield [m for m in batch if m is not None]
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await reader


async def log_stream(
    *,
    access: AccessCheck,
    filters: LogFilters,
    since: datetime | None,
    listen: ListenFactory,
) -> AsyncIterator[DeliveryLog]:
    """Every status change of the matching logs, as DeliveryLog rows carrying the status of
    that change (so no transition is skipped even if the row has moved on since). `filters`
    are the `logs` query's (selectors.apply_log_filters / log_matches): a malformed id matches
    nothing.

    With `since`, first the current state of every matching log changed after `since`, then
    live changes; the groups are joined before the database is read, and a live change older
    than or equal to what the catch-up already showed is dropped, so there is no gap and no
    duplicate at the seam.

    `access` is asked at the start (no account: raises NotFound) and again every
    `recheck_interval()`, also while no change arrives: an account no longer visible is
    dropped, and the stream ends when none is left or the caller is no longer authenticated."""
    accounts = set(await access())
    if not accounts:
        raise NotFound("Account")
    checked = time.monotonic()

    async def recheck() -> bool:
        nonlocal accounts, checked
        if time.monotonic() - checked < recheck_interval():
            return True
        try:
            # Never widened: a membership gained later has no joined group.
            accounts &= set(await access())
        except Unauthenticated:
            return False
        checked = time.monotonic()
        return bool(accounts)

    shown: dict[int, datetime] = {}
    async with listen(MESSAGE_TYPE, groups=[group_name(a) for a in sorted(accounts)]) as messages:
        if since is not None:
            cursor = (since, 0)
            while chunk := await sync_to_async(_catch_up_chunk)(accounts, filters, cursor):
                for log in chunk:
                    shown[log.pk] = log.updated_at
                    yield log
                cursor = (chunk[-1].updated_at, chunk[-1].pk)
                if not await recheck():
                    return
        async with contextlib.aclosing(_batches(messages, recheck_interval())) as batches:
            async for batch in batches:
                if not await recheck():
                    return
                updates = [
                    u
                    for message in batch
                    for u in message["updates"]
                    if u["account_id"] in accounts
                    and _may_match(u, filters)
                    and not (
                        u["log_id"] in shown
                        and u["updated_at"] is not None
                        and datetime.fromisoformat(u["updated_at"]) <= shown[u["log_id"]]
                    )
                ]
                if not updates:
                    continue
                logs = await _load_shared(updates)
                for update in updates:
                    shared = logs.get(update["log_id"])
                    if shared is None:
                        continue
                    row = copy.copy(shared)  # other subscribers hold the same row
                    row.status = update["status"]
                    row.attempt_count = update["attempt_count"]
                    if log_matches(row, filters):
                        yield row

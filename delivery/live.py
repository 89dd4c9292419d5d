"""The only module that knows the channel-layer group names and message format.

Messages are small: ids, status and timestamps. Subscribers reload what they render. The
channel layer is at-most-once (it drops past its capacity), so clients catch up from the
database after a reconnect.
"""

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

from delivery.models import DeliveryLog

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
        "status": log.status,
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
    loop = _server_loop
    if isinstance(layer, InMemoryChannelLayer):
        if loop is None or loop.is_closed():
            return  # nobody in this process can be subscribed
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(layer.group_send(group, message))
        else:
            asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop)
        return
    async_to_sync(layer.group_send)(group, message)

"""A graphql-transport-ws client over channels' WebsocketCommunicator, through the real
project.asgi.application."""

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from redis import asyncio as aioredis

from delivery.live import group_name, listeners
from delivery.models import Destination
from delivery.transport import new_signing_secret
from identity.auth import token_issue
from project.asgi import application
from tests.factories import make_account, make_user
from tests.sink import Sink

PROTOCOL = "graphql-transport-ws"


class WSClient:
    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self._ids = 0

    async def send(self, message: dict[str, Any]) -> None:
        await self.communicator.send_to(text_data=json.dumps(message))

    async def receive(self, timeout: float = 5) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await self.communicator.receive_from(timeout))
        return message

    async def init(self, token: str | None) -> dict[str, Any]:
        await self.send({"type": "connection_init", "payload": {"authToken": token}})
        return await self.receive()

    async def subscribe(self, query: str, variables: dict[str, Any] | None = None) -> str:
        self._ids += 1
        op_id = str(self._ids)
        await self.send(
            {
                "id": op_id,
                "type": "subscribe",
                "payload": {"query": query, "variables": variables or {}},
            }
        )
        return op_id

    async def next_data(self, timeout: float = 5) -> dict[str, Any]:
        message = await self.receive(timeout)
        assert message["type"] == "next", message
        data: dict[str, Any] = message["payload"]["data"]
        return data

    async def nothing_pending(self) -> bool:
        return await self.communicator.receive_nothing(timeout=0.3)

    async def close(self) -> None:
        await self.communicator.disconnect()


async def subscribers(account_id: object, group_of: Callable[[object], str] = group_name) -> int:
    """How many streams listen to the account's live group (of logs, unless `group_of` names
    another): those of this process (each process's hub joins the group in the layer once, and
    only then counts a stream), or, when streams run in server processes, the channels that
    joined it in the layer (one per process). A test waits on this before causing updates."""
    group = group_of(account_id)
    if isinstance(get_channel_layer(), InMemoryChannelLayer):
        members = len(local_members(group))
    else:
        members = await redis_subscribers(group)
    return max(listeners(group), members)


def local_members(group: str) -> list[str]:
    """The channels of this process (and loop) that joined `group` in the channel layer."""
    layer = get_channel_layer()
    if isinstance(layer, InMemoryChannelLayer):
        return sorted(layer.groups.get(group, {}))
    return sorted(layer.groups.get(layer._get_group_channel_name(group), ()))


async def redis_subscribers(group: str) -> int:
    """The Redis connections subscribed to `group` (channels_redis' pub/sub layer: one per
    process and event loop that has a member in it)."""
    layer = get_channel_layer()
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    try:
        ((_, count),) = await client.pubsub_numsub(layer._get_group_channel_name(group))
        return int(count)
    finally:
        await client.aclose()


async def wait_subscribed(
    account_id: object,
    count: int = 1,
    timeout: float = 5,
    group_of: Callable[[object], str] = group_name,
) -> None:
    deadline = time.monotonic() + timeout
    while await subscribers(account_id, group_of) < count:
        assert time.monotonic() < deadline, f"fewer than {count} subscribers after {timeout}s"
        await asyncio.sleep(0.01)


async def connect(
    *, headers: list[tuple[bytes, bytes]] | None = None, protocol: str = PROTOCOL
) -> tuple[WSClient, bool, Any]:
    communicator = WebsocketCommunicator(
        application, "/graphql/", subprotocols=[protocol], headers=headers or []
    )
    connected, subprotocol = await communicator.connect()
    if not connected:
        # What a server does after a refused handshake; else the app instance stays alive.
        await communicator.disconnect()
    return WSClient(communicator), connected, subprotocol


@pytest.fixture
async def ws_clients() -> Any:
    clients: list[WSClient] = []

    async def open_client(**kwargs: Any) -> WSClient:
        client, connected, _ = await connect(**kwargs)
        assert connected
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.close()


@pytest.fixture(autouse=True)
async def _close_thread_connections() -> Any:
    """Async tests touch the database from asgiref's worker thread: close that thread's
    connection afterwards, or the test database cannot be dropped (STACK.md trap 11)."""
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


@pytest.fixture
def tenant(sink: Sink) -> dict[str, Any]:
    """An account with a GET and a POST destination on the sink, its app secret, and a token
    of its admin."""
    user = make_user()
    account, secret = make_account(admin=user)
    for method in ("GET", "POST"):
        Destination.objects.create(
            account=account,
            url=f"{sink.url}/{method.lower()}",
            http_method=method,
            signing_secret=new_signing_secret(),
        )
    return {"account_id": str(account.pk), "secret": secret, "token": token_issue(user=user)}


def post_event(server_url: str, secret: str, event_id: str) -> None:
    """POST an event to a server process's incoming_data; it must be accepted."""
    response = requests.post(
        f"{server_url}/server/incoming_data/",
        json={"order": event_id},
        headers={"CL-X-TOKEN": secret, "CL-X-EVENT-ID": event_id},
        timeout=10,
    )
    assert response.status_code == 202, response.text

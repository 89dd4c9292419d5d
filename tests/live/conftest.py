"""A graphql-transport-ws client over channels' WebsocketCommunicator, through the real
project.asgi.application."""

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels.testing import WebsocketCommunicator

from delivery.live import group_name
from project.asgi import application

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
    """How many channels listen to the account's live group (of logs, unless `group_of`
    names another), read from the channel layer itself (in-memory or Redis): a test waits on
    this before causing updates."""
    layer = get_channel_layer()
    group = group_of(account_id)
    if isinstance(layer, InMemoryChannelLayer):
        return len(layer.groups.get(group, {}))
    connection = layer.connection(layer.consistent_hash(group))
    return int(await connection.zcard(layer._group_key(group)))


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

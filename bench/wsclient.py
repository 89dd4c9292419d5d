"""A minimal graphql-transport-ws client (the `websockets` library), cheap enough to hold a
thousand subscriptions from one process, and a helper that runs subscribers in a thread."""

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

PROTOCOL = "graphql-transport-ws"
LOG_UPDATES = "subscription ($id: ID) { logUpdates(accountId: $id) { id status } }"

OnNext = Callable[[dict[str, Any], float], None]  # (payload data, arrival time.time())


async def subscribe(
    url: str,
    token: str,
    variables: dict[str, Any],
    on_next: OnNext,
    *,
    query: str = LOG_UPDATES,
    ready: Callable[[], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Connect, authenticate with connection_init {"authToken": token}, subscribe, and call
    `on_next(data, arrival)` for every `next` message until `stop` is set."""
    async with connect(
        url,
        subprotocols=[Subprotocol(PROTOCOL)],
        open_timeout=60,
        ping_interval=None,
        max_size=None,
    ) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authToken": token}}))
        ack = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if ack.get("type") != "connection_ack":
            raise RuntimeError(f"connection refused: {ack}")
        message = {"query": query, "variables": variables}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": message}))
        if ready:
            ready()
        # One receive per message (no wait() on two futures each time: with a thousand
        # subscribers in one process the client's own cost shows in the latency); `stop`
        # closes the socket, which ends the loop.
        stopper = asyncio.ensure_future(_close_on(stop or asyncio.Event(), ws))
        try:
            async for raw in ws:
                arrival = time.time()
                msg = json.loads(raw)
                if msg["type"] == "next":
                    on_next(msg["payload"].get("data") or {}, arrival)
                elif msg["type"] == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                elif msg["type"] in ("error", "complete"):
                    raise RuntimeError(f"subscription ended: {msg}")
        finally:
            stopper.cancel()


async def _close_on(stop: asyncio.Event, ws: Any) -> None:
    await stop.wait()
    await ws.close()


class LoopThread:
    """An asyncio loop in a daemon thread: start coroutines from synchronous code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stop_event: asyncio.Event = self.call(self._make_event)

    @staticmethod
    async def _make_event() -> asyncio.Event:
        return asyncio.Event()

    def call(self, coro_fn: Callable[[], Awaitable[Any]], timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(_wrap(coro_fn), self.loop).result(timeout)

    def spawn(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self) -> None:
        """Tell every subscriber to stop, cancel what is left, then stop the loop."""

        async def shutdown() -> None:
            self.stop_event.set()
            await asyncio.sleep(0.5)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.call(shutdown, timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


async def _wrap(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return await coro_fn()


def group_size(account_id: object) -> int:
    """Subscribers of the account's live group, read from the Redis channel layer."""
    from bench.common import redis_client
    from delivery.live import group_name

    return int(redis_client().zcard(f"asgi:group:{group_name(account_id)}"))

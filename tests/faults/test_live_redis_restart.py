"""A server process's live hub after its Redis crashes and comes back: channels_redis' pub/sub
layer (redis-py underneath) subscribes again by itself, so the process's streams hear changes
published after the restart without any of them reconnecting. (What was published while Redis
was down is lost to them: clients catch up with `after` when they reconnect.)"""

import asyncio
import time
import uuid
from typing import Any

from asgiref.sync import sync_to_async
from channels_redis.pubsub import RedisPubSubChannelLayer

from delivery import live
from tests.faults.conftest import SERVICES_ONLY, PrivateRedis

pytestmark = SERVICES_ONLY


async def _mut_setup() -> None: ...


async def test_the_hub_hears_changes_again_after_redis_restarts(
    private_redis: PrivateRedis, monkeypatch: Any
) -> None:
    from redis.asyncio.client import PubSub

    async def no_resubscribe(self: Any, connection: Any) -> None:
        return None

    monkeypatch.setattr(PubSub, "on_connect", no_resubscribe)  # MUT
    layer = RedisPubSubChannelLayer(
        hosts=[{"address": private_redis.url, "socket_timeout": 10}],
        prefix=f"test-restart-{uuid.uuid4().hex}",
    )
    hub, group = live._Hub(layer), live.group_name("restart")
    sender = live._redis_sender(layer)
    assert sender is not None

    async def publish(n: int) -> None:
        message = {"type": live.MESSAGE_TYPE, "group": group, "n": n}
        await sync_to_async(sender.group_send)(group, message)

    async def heard(messages: Any, n: int, within: float) -> bool:
        """Publish `n` until it arrives (a restarted Redis has no subscriber at first)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                await publish(n)
            except Exception:  # Redis still starting: try again
                await asyncio.sleep(0.2)
                continue
            try:
                while (await asyncio.wait_for(anext(messages), 0.5))["n"] != n:
                    pass
                return True
            except TimeoutError:
                continue
        return False

    try:
        async with hub.listen(live.MESSAGE_TYPE, groups=[group]) as messages:
            assert await heard(messages, 1, within=5)
            private_redis.kill()
            await asyncio.sleep(1.5)  # the hub's reads fail meanwhile
            private_redis.start()
            assert await heard(messages, 2, within=15)
    finally:
        await layer.flush()

"""A server process's live hub after its Redis crashes and comes back: channels_redis' pub/sub
layer (redis-py underneath) subscribes again by itself, so its streams hear changes published
after the restart, and the hub reports the interruption (what was published while Redis was
down is lost to them: the transport closes its sockets with 1012 and clients resume with
`after`)."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels_redis.pubsub import RedisPubSubChannelLayer

from delivery import live
from tests.faults.conftest import SERVICES_ONLY, PrivateRedis

pytestmark = SERVICES_ONLY


@pytest.fixture
async def layer(private_redis: PrivateRedis) -> AsyncIterator[RedisPubSubChannelLayer]:
    """A pub/sub layer on the test's own Redis, configured as project/settings.py does."""
    layer = RedisPubSubChannelLayer(
        hosts=[{"address": private_redis.url, "socket_timeout": 10}],
        prefix=f"test-restart-{uuid.uuid4().hex}",
    )
    yield layer
    await layer.flush()


async def test_the_hub_hears_changes_again_after_redis_restarts(
    private_redis: PrivateRedis, layer: RedisPubSubChannelLayer
) -> None:
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

    async with hub.listen(live.MESSAGE_TYPE, groups=[group]) as messages:
        assert await heard(messages, 1, within=5)
        private_redis.kill()
        await asyncio.sleep(1.5)  # the hub's reads fail meanwhile
        private_redis.start()
        assert await heard(messages, 2, within=15)


async def test_a_reconnect_of_the_layer_tells_the_loops_interruption_handlers(
    private_redis: PrivateRedis, layer: RedisPubSubChannelLayer
) -> None:
    """Changes published while the process was cut off are lost to its streams: the hub says
    so once its connection is back (the transport then closes its sockets with 1012)."""
    hub, group = live._Hub(layer), live.group_name("interrupted")
    interruptions: list[float] = []
    live.on_interruption(lambda: interruptions.append(time.monotonic()))
    async with hub.listen(live.MESSAGE_TYPE, groups=[group]):
        await asyncio.sleep(0.5)
        assert interruptions == []  # the first connect is not an interruption
        private_redis.kill()
        await asyncio.sleep(1.5)
        assert interruptions == []  # still cut off: nothing to resume from yet
        private_redis.start()
        deadline = time.monotonic() + 15
        while not interruptions:
            assert time.monotonic() < deadline, "no interruption after Redis came back"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        assert len(interruptions) == 1

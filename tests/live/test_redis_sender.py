"""delivery.live's sync group send on a real Redis: what channels_redis' own receivers read,
with the layer's capacity and expiry."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from delivery import live

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs a real Redis"),
]


@pytest.fixture
async def layer() -> AsyncIterator[RedisChannelLayer]:
    layer = RedisChannelLayer(
        hosts=[settings.REDIS_URL], prefix=f"test-sender-{uuid.uuid4().hex}", capacity=2
    )
    yield layer
    await layer.flush()  # only this prefix's keys


async def test_every_member_receives_each_message_in_order_up_to_its_capacity(
    layer: RedisChannelLayer,
) -> None:
    members = [await layer.new_channel() for _ in range(2)]
    for channel in members:
        await layer.group_add("logs.a", channel)
    await layer.group_add("logs.b", other := await layer.new_channel())
    sender = live._RedisSender(layer)

    for n in range(3):
        await sync_to_async(sender.group_send)("logs.a", {"type": "log.updates", "n": n})

    for channel in members:
        received = [await layer.receive(channel) for _ in range(2)]
        assert received == [{"type": "log.updates", "n": 0}, {"type": "log.updates", "n": 1}]
        with pytest.raises(TimeoutError):  # the third was over the capacity of 2
            await asyncio.wait_for(layer.receive(channel), 0.3)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(other), 0.3)


async def test_an_empty_group_sends_nothing(layer: RedisChannelLayer) -> None:
    sender = live._RedisSender(layer)
    await sync_to_async(sender.group_send)("logs.nobody", {"type": "log.updates"})
    connection = layer.connection(0)
    assert await connection.keys(f"{layer.prefix}*") == []


def test_publish_uses_it_for_the_configured_redis_layer() -> None:
    from channels.layers import get_channel_layer

    configured = get_channel_layer()
    assert isinstance(configured, RedisChannelLayer)
    assert isinstance(live._redis_sender(configured), live._RedisSender)

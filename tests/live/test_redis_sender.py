"""delivery.live on channels_redis' pub/sub layer and a real Redis: what its sync sender
publishes is what the layer's own receivers read, and the process hub leaves Redis as it found
it when its last stream ends."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings

from delivery import live

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs a real Redis"),
]


@pytest.fixture
async def layer() -> AsyncIterator[RedisPubSubChannelLayer]:
    layer = RedisPubSubChannelLayer(
        hosts=[{"address": settings.REDIS_URL}], prefix=f"test-sender-{uuid.uuid4().hex}"
    )
    yield layer
    await layer.flush()  # its subscriptions and connections


def subscribed(layer: RedisPubSubChannelLayer) -> list[bytes]:
    """The Redis channels with a subscriber under this layer's prefix (pub/sub is server-wide:
    the prefix keeps other test runs out)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        return sorted(client.pubsub_channels(f"{layer._kwargs['prefix']}*"))
    finally:
        client.close()


async def test_every_member_receives_each_message_in_order(
    layer: RedisPubSubChannelLayer,
) -> None:
    members = [await layer.new_channel() for _ in range(2)]
    for channel in members:
        await layer.group_add("logs.a", channel)
    await layer.group_add("logs.b", other := await layer.new_channel())
    sender = live._redis_sender(layer)
    assert isinstance(sender, live._RedisPublisher)

    for n in range(3):
        await sync_to_async(sender.group_send)("logs.a", {"type": "log.updates", "n": n})

    for channel in members:
        received = [await layer.receive(channel) for _ in range(3)]
        assert received == [{"type": "log.updates", "n": n} for n in range(3)]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(other), 0.3)


def test_publish_uses_it_for_the_configured_redis_layer() -> None:
    from channels.layers import get_channel_layer

    configured = get_channel_layer()
    assert isinstance(configured, RedisPubSubChannelLayer)
    assert isinstance(live._redis_sender(configured), live._RedisPublisher)


async def test_the_hub_unsubscribes_when_its_last_stream_ends(
    layer: RedisPubSubChannelLayer,
) -> None:
    hub = live._Hub(layer)
    prefix = layer._kwargs["prefix"]
    received: list[dict[str, Any]] = []
    sender = live._redis_sender(layer)
    assert sender is not None

    async with hub.listen("log.updates", groups=["logs.a"]) as messages:
        assert subscribed(layer) == sorted(
            [f"{prefix}__group__logs.a".encode(), str(hub.channel).encode()]
        )
        message = {"type": "log.updates", "group": "logs.a", "n": 1}  # as _group_send sends
        await sync_to_async(sender.group_send)("logs.a", message)
        received.append(await asyncio.wait_for(anext(messages), 5))
    assert received == [{"type": "log.updates", "group": "logs.a", "n": 1}]
    deadline = time.monotonic() + 5  # the cancelled reader unsubscribes as it ends
    while subscribed(layer):
        assert time.monotonic() < deadline, subscribed(layer)
        await asyncio.sleep(0.02)
    assert hub.channel is None
    assert hub.reader is None
    assert dict(hub.queues) == {}

"""The per-process hub of the live streams (delivery/live.py): however many streams of a
process listen to a group, the channel layer holds one member for it and carries each message
once; every stream gets that message; a group is left with its last stream, and the hub's
channel with the last stream of the process. On the embedded in-memory layer and on Redis."""

import asyncio
import contextlib
import time
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer

from delivery import live
from tests.live.conftest import local_members, redis_subscribers

MESSAGE = {"type": live.MESSAGE_TYPE, "updates": [{"log_id": 1, "account_id": "a"}]}


async def members(group: str) -> list[str]:
    """The group's members in the layer; on Redis also checked against its subscriptions."""
    found = local_members(group)
    if not isinstance(get_channel_layer(), InMemoryChannelLayer):
        # A (un)subscribe is sent on the layer's connection, ours asks on another: wait a bit.
        deadline = time.monotonic() + 2
        while (subscribed := await redis_subscribers(group)) != len(found):
            assert time.monotonic() < deadline, f"{subscribed} Redis subscribers, {found}"
            await asyncio.sleep(0.02)
    return found


async def send(group: str) -> None:
    """Publish as the delivery path does (a sync caller outside the server loop)."""
    live.bind_server_loop(asyncio.get_running_loop())
    layer = get_channel_layer()
    await sync_to_async(live._group_send)(layer, group, dict(MESSAGE))


async def test_a_hundred_streams_are_one_member_and_each_gets_every_message_once() -> None:
    group = live.group_name("hub-1")
    async with contextlib.AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(live.listen(live.MESSAGE_TYPE, groups=[group]))
            for _ in range(100)
        ]
        assert live.listeners(group) == 100
        assert len(await members(group)) == 1

        await send(group)
        await send(group)
        got = [
            [await asyncio.wait_for(anext(s), 5), await asyncio.wait_for(anext(s), 5)]
            for s in streams
        ]
        assert all(pair == [{**MESSAGE, "group": group}] * 2 for pair in got)
        assert all(pair[0] is got[0][0] for pair in got)  # one message object, shared
        nothing = [asyncio.ensure_future(anext(s)) for s in streams[:3]]
        await asyncio.sleep(0.3)
        assert not any(f.done() for f in nothing)
        for f in nothing:
            f.cancel()

    assert live.listeners(group) == 0
    assert await members(group) == []


async def test_a_stream_gets_only_its_groups_and_the_hub_restarts_after_the_last_left() -> None:
    mine, other = live.group_name("hub-2"), live.group_name("hub-3")
    async with live.listen(live.MESSAGE_TYPE, groups=[mine]) as stream:
        first = await members(mine)
        await send(other)
        await send(mine)
        message: dict[str, Any] = await asyncio.wait_for(anext(stream), 5)
        assert message["group"] == mine
    assert await members(mine) == []

    async with live.listen(live.MESSAGE_TYPE, groups=[mine]) as stream:
        again = await members(mine)
        await send(mine)
        assert (await asyncio.wait_for(anext(stream), 5))["group"] == mine
    assert len(again) == 1
    assert again != first  # a new channel: the old one was dropped with its reader

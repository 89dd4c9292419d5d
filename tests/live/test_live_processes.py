"""Live status across real processes, through a real GraphQL-over-WebSocket client (`gql`).

Services run: two daphne processes and a `run_huey` worker on Redis; a subscriber on each
daphne sees every change made by the other daphne (ingest) and by the worker (delivery).
Embedded run: `manage.py serve` alone (in-memory channel layer), the same client."""

import asyncio
from typing import Any

import pytest
from django.conf import settings
from gql import Client, GraphQLRequest
from gql.transport.websockets import WebsocketsTransport

from delivery.models import DeliveryLog
from tests.live.conftest import post_event, wait_subscribed
from tests.processes import Processes
from tests.sink import Sink

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SUBSCRIPTION = """
subscription ($accountId: ID) {
  logUpdates(accountId: $accountId) { id eventId status }
}"""
TERMINAL = {"SUCCESS", "FAILED"}
needs_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (services run)")


def client(server_url: str, token: str) -> Client:
    transport = WebsocketsTransport(
        url=server_url.replace("http://", "ws://") + "/graphql/",
        init_payload={"authToken": token},
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
    )
    return Client(transport=transport)


Seen = dict[str, list[str]]  # statuses per log id, in arrival order


async def watch(
    server_url: str, token: str, account_id: str, seen: Seen, *, event_id: str, logs: int = 2
) -> None:
    """Record every update into `seen` until `logs` logs of `event_id` reached a final status."""
    async with client(server_url, token) as session:
        request = GraphQLRequest(SUBSCRIPTION, variable_values={"accountId": account_id})
        done: set[str] = set()
        async for result in session.subscribe(request):
            update = result["logUpdates"]
            seen.setdefault(update["id"], []).append(update["status"])
            if update["eventId"] == event_id and update["status"] in TERMINAL:
                done.add(update["id"])
                if len(done) >= logs:
                    return


async def log_ids(event_id: str) -> set[str]:
    return {
        str(pk)
        async for pk in DeliveryLog.objects.filter(event__event_id=event_id).values_list(
            "pk", flat=True
        )
    }


@needs_redis
async def test_subscribers_on_two_daphne_processes_see_every_change_in_order(
    processes: Processes, tenant: dict[str, Any], sink: Sink
) -> None:
    servers = [processes.server("daphne", wait=False) for _ in range(2)]
    processes.worker(wait=False)
    for process in processes.started:
        await asyncio.to_thread(process.wait_ready)
    seen: list[Seen] = [{}, {}]
    watchers = [
        asyncio.create_task(
            watch(s.url, tenant["token"], tenant["account_id"], seen[i], event_id="cross")
        )
        for i, s in enumerate(servers)
    ]
    await wait_subscribed(tenant["account_id"], 2, timeout=20)

    await asyncio.to_thread(post_event, servers[0].url, tenant["secret"], "cross")

    await asyncio.wait_for(asyncio.gather(*watchers), timeout=30)
    expected = {key: ["QUEUED", "SENDING", "SUCCESS"] for key in await log_ids("cross")}
    assert len(expected) == 2
    assert seen == [expected, expected]
    assert len(sink.received()) == 2


@pytest.mark.skipif(bool(settings.REDIS_URL), reason="embedded run only (no REDIS_URL)")
async def test_serve_alone_streams_every_change_to_a_real_client(
    processes: Processes, tenant: dict[str, Any], sink: Sink
) -> None:
    server = await asyncio.to_thread(processes.server, "serve")
    seen: Seen = {}
    watcher = asyncio.create_task(
        watch(server.url, tenant["token"], tenant["account_id"], seen, event_id="real")
    )
    # The server's in-memory layer cannot be inspected from here: post warm-up events until
    # the subscriber sees one, then the event under test.
    for n in range(100):
        if seen:
            break
        await asyncio.to_thread(post_event, server.url, tenant["secret"], f"warm-{n}")
        await asyncio.sleep(0.1)
    assert seen, "the subscriber saw no warm-up event"

    await asyncio.to_thread(post_event, server.url, tenant["secret"], "real")

    await asyncio.wait_for(watcher, timeout=30)
    real = await log_ids("real")
    assert len(real) == 2
    assert {i: seen[i] for i in real} == {key: ["QUEUED", "SENDING", "SUCCESS"] for key in real}


@needs_redis
async def test_idle_subscription_stays_open_for_30_seconds(
    processes: Processes, tenant: dict[str, Any], sink: Sink
) -> None:
    server = await asyncio.to_thread(processes.server, "daphne")
    await asyncio.to_thread(processes.worker)
    seen: Seen = {}
    watcher = asyncio.create_task(
        watch(server.url, tenant["token"], tenant["account_id"], seen, event_id="after-idle")
    )
    await wait_subscribed(tenant["account_id"], 1, timeout=20)

    done, _ = await asyncio.wait([watcher], timeout=30)
    assert not done, watcher.exception()  # nothing closed or broke the idle stream

    await asyncio.to_thread(post_event, server.url, tenant["secret"], "after-idle")
    await asyncio.wait_for(watcher, timeout=30)
    assert sorted(statuses[-1] for statuses in seen.values()) == ["SUCCESS", "SUCCESS"]


async def test_sigterm_closes_open_websockets_with_going_away(
    processes: Processes, tenant: dict[str, Any]
) -> None:
    import json

    import websockets

    server = await asyncio.to_thread(processes.server, "serve")
    url = server.url.replace("http://", "ws://") + "/graphql/"
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"authToken": tenant["token"]}})
        )
        assert json.loads(await ws.recv()) == {"type": "connection_ack"}
        await ws.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {
                        "query": SUBSCRIPTION,
                        "variables": {"accountId": tenant["account_id"]},
                    },
                }
            )
        )
        server.terminate()
        await asyncio.wait_for(ws.wait_closed(), timeout=15)
        assert ws.close_code == 1001
    assert await asyncio.to_thread(server.popen.wait, 15) == 0

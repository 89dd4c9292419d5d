"""logUpdates through the real ASGI application (channels' communicator) with the configured
channel layer: in-memory on embedded defaults, Redis in the services run."""

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from delivery import destinations as destination_services
from delivery import live, tasks
from delivery.models import DeliveryLog, Destination
from identity.models import Membership
from schema import subscriptions
from tests.conftest import Persona
from tests.live.conftest import connect, wait_subscribed
from tests.live.conftest import subscribers as live_subscribers
from tests.sink import Sink

pytestmark = pytest.mark.django_db(transaction=True)

SUBSCRIPTION = """
subscription ($accountId: ID, $filters: LogUpdateFilter, $since: DateTime) {
  logUpdates(accountId: $accountId, filters: $filters, since: $since) {
    id status attemptCount eventId destination { id }
  }
}"""


@pytest.fixture
def destinations(admin: Persona, sink: Sink) -> list[Destination]:
    return [
        destination_services.destination_create(
            actor=admin.user,
            account_id=admin.user.memberships.get().account_id,
            url=f"{sink.url}/{name}",
            http_method="POST",
        )
        for name in ("a", "b")
    ]


def ingest(account_id: Any, event_id: str | None = None) -> Any:
    return tasks.event_accept(account_id=account_id, event_id=event_id, payload={"n": 1}, size=8)


async def collect(client: Any, count: int) -> list[tuple[str, str]]:
    """(log id, status) of the next `count` updates."""
    updates = []
    for _ in range(count):
        data = await client.next_data()
        updates.append((data["logUpdates"]["id"], data["logUpdates"]["status"].lower()))
    return updates


async def test_valid_token_in_connection_init_is_acknowledged(admin: Persona) -> None:
    client, connected, subprotocol = await connect()
    assert connected
    assert subprotocol == "graphql-transport-ws"
    assert await client.init(admin.token) == {"type": "connection_ack"}
    await client.close()


@pytest.mark.parametrize("token", [None, "", "dpu_not-a-real-token"])
async def test_bad_token_closes_with_4401_which_clients_do_not_retry(
    db: None, token: str | None
) -> None:
    client, connected, _ = await connect()
    assert connected
    await client.send({"type": "connection_init", "payload": {"authToken": token}})
    closed = await client.communicator.receive_output(timeout=5)
    assert closed == {
        "type": "websocket.close",
        "code": 4401,
        "reason": "Invalid, expired or revoked token",
    }
    await client.close()


async def test_expired_token_closes_with_4401(admin: Persona) -> None:
    from identity.models import AuthToken

    await AuthToken.objects.filter(user=admin.user).aupdate(expires_at=timezone.now())
    client, _, _ = await connect()
    await client.send({"type": "connection_init", "payload": {"authToken": admin.token}})
    closed = await client.communicator.receive_output(timeout=5)
    assert closed["code"] == 4401
    await client.close()


async def test_authorization_header_on_upgrade_authenticates(admin: Persona) -> None:
    client, _, _ = await connect(headers=[(b"authorization", f"Bearer {admin.token}".encode())])
    await client.send({"type": "connection_init", "payload": {}})
    assert await client.receive() == {"type": "connection_ack"}
    await client.close()


@pytest.mark.parametrize(
    "payload",
    [
        lambda token: {"Authorization": f"Bearer {token}"},
        lambda token: {"authorization": f"bearer {token}"},
        lambda token: {"headers": {"Authorization": f"Bearer {token}"}},
    ],
    ids=["Authorization", "lower-case", "headers"],
)
async def test_authorization_header_in_connection_init_authenticates(
    admin: Persona, payload: Any
) -> None:
    client, _, _ = await connect()
    await client.send({"type": "connection_init", "payload": payload(admin.token)})
    assert await client.receive() == {"type": "connection_ack"}
    await client.close()


@pytest.mark.parametrize(
    "payload",
    [
        {"Authorization": "Bearer dpu_not-a-real-token"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"headers": {"Authorization": 17}},
    ],
)
async def test_bad_authorization_in_connection_init_closes_with_4401(
    db: None, payload: dict[str, Any]
) -> None:
    client, _, _ = await connect()
    await client.send({"type": "connection_init", "payload": payload})
    closed = await client.communicator.receive_output(timeout=5)
    assert closed == {
        "type": "websocket.close",
        "code": 4401,
        "reason": "Invalid, expired or revoked token",
    }
    await client.close()


async def test_legacy_graphql_ws_subprotocol_is_refused_and_logged(
    db: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="schema.consumers"):
        _, connected, _ = await connect(protocol="graphql-ws")
    assert not connected
    assert [r.getMessage() for r in caplog.records if r.name == "schema.consumers"] == [
        "WebSocket refused: subprotocols ['graphql-ws'] offered; only graphql-transport-ws is "
        "served (the legacy graphql-ws protocol of subscriptions-transport-ws is not)"
    ]


async def test_member_receives_queued_sending_success_per_log_in_order(
    ws_clients: Any,
    admin: Persona,
    normal_user: Persona,
    destinations: list[Destination],
    sink: Sink,
) -> None:
    account_id = str(destinations[0].account_id)
    clients = {}
    for persona in (admin, normal_user):
        clients[persona.name] = client = await ws_clients()
        assert await client.init(persona.token) == {"type": "connection_ack"}
        await client.subscribe(SUBSCRIPTION, {"accountId": account_id})
    await wait_subscribed(account_id, 2)

    await sync_to_async(ingest)(destinations[0].account_id, "evt-1")

    log_ids = sorted([str(pk) async for pk in DeliveryLog.objects.values_list("pk", flat=True)])
    for client in clients.values():
        updates = await collect(client, 6)
        for log_id in log_ids:
            assert [s for i, s in updates if i == log_id] == ["queued", "sending", "success"]
        assert await client.nothing_pending()
    assert len(sink.received()) == 2


async def test_ending_one_subscription_leaves_the_others_on_the_socket_running(
    ws_clients: Any, admin: Persona, destinations: list[Destination]
) -> None:
    # strawberry-django #942: completing one subscription could silently stop the others on
    # the same socket. Three on one socket (one channel: the group counts it once); the middle
    # one ends; the other two go on.
    account_id = str(destinations[0].account_id)
    client = await ws_clients()
    await client.init(admin.token)
    ids = [await client.subscribe(SUBSCRIPTION, {"accountId": account_id}) for _ in range(3)]
    await wait_subscribed(account_id)

    async def statuses(count: int) -> dict[str, list[str]]:
        """The statuses the next `count` messages carried, per subscription."""
        received: dict[str, list[str]] = {}
        for _ in range(count):
            message = await client.receive()
            assert message["type"] == "next", message
            status = message["payload"]["data"]["logUpdates"]["status"]
            received.setdefault(message["id"], []).append(status)
        return {op: sorted(found) for op, found in sorted(received.items())}

    each = sorted(["QUEUED", "SENDING", "SUCCESS"] * 2)  # two logs
    await sync_to_async(ingest)(destinations[0].account_id, "before-complete")
    assert await statuses(18) == dict.fromkeys(ids, each)

    await client.send({"id": ids[1], "type": "complete"})
    await client.send({"type": "ping"})  # handled after the complete, in order
    assert await client.receive() == {"type": "pong"}
    await sync_to_async(ingest)(destinations[0].account_id, "after-complete")

    assert await statuses(12) == dict.fromkeys([ids[0], ids[2]], each)
    assert await client.nothing_pending()


async def test_outsider_cannot_subscribe_to_foreign_account_and_receives_nothing(
    ws_clients: Any, outsider: Persona, destinations: list[Destination]
) -> None:
    client = await ws_clients()
    await client.init(outsider.token)
    foreign = await client.subscribe(SUBSCRIPTION, {"accountId": str(destinations[0].account_id)})
    message = await client.receive()
    assert message["id"] == foreign
    assert message["type"] == "next"
    assert message["payload"]["errors"][0]["extensions"]["code"] == "not_found"
    assert (await client.receive())["type"] == "complete"

    await client.subscribe(SUBSCRIPTION)  # all of the outsider's own accounts
    await wait_subscribed(
        await outsider.user.memberships.values_list("account_id", flat=True).aget()
    )
    await sync_to_async(ingest)(destinations[0].account_id)
    assert await client.nothing_pending()


async def test_status_filter_passes_only_matching_changes(
    ws_clients: Any, admin: Persona, destinations: list[Destination]
) -> None:
    client = await ws_clients()
    await client.init(admin.token)
    await client.subscribe(SUBSCRIPTION, {"filters": {"status": ["SUCCESS"]}})
    await wait_subscribed(destinations[0].account_id)
    await sync_to_async(ingest)(destinations[0].account_id)
    updates = await collect(client, 2)
    assert sorted(status for _, status in updates) == ["success", "success"]
    assert await client.nothing_pending()


@pytest.mark.parametrize(
    "filters",
    [
        pytest.param(lambda pk: {"destinationId": pk}, id="destinationId"),
        pytest.param(lambda pk: {"destination": pk}, id="deprecated-destination"),
        pytest.param(lambda pk: {"destinationId": pk, "destination": "0"}, id="destinationId-wins"),
    ],
)
async def test_destination_filter_passes_only_that_destination(
    ws_clients: Any, admin: Persona, destinations: list[Destination], filters: Any
) -> None:
    client = await ws_clients()
    await client.init(admin.token)
    await client.subscribe(SUBSCRIPTION, {"filters": filters(str(destinations[1].pk))})
    await wait_subscribed(destinations[0].account_id)
    await sync_to_async(ingest)(destinations[0].account_id)
    data = [await client.next_data() for _ in range(3)]
    assert {d["logUpdates"]["destination"]["id"] for d in data} == {str(destinations[1].pk)}
    assert await client.nothing_pending()


async def test_membership_removal_stops_the_stream(
    ws_clients: Any,
    admin: Persona,
    normal_user: Persona,
    destinations: list[Destination],
    settings: Any,
) -> None:
    settings.LIVE_RECHECK_SECONDS = 0.2
    client = await ws_clients()
    await client.init(normal_user.token)
    op_id = await client.subscribe(SUBSCRIPTION, {"accountId": str(destinations[0].account_id)})
    await wait_subscribed(destinations[0].account_id)
    await sync_to_async(ingest)(destinations[0].account_id)
    assert len(await collect(client, 6)) == 6

    await Membership.objects.filter(user=normal_user.user).adelete()
    # Within LIVE_RECHECK_SECONDS the stream ends, without waiting for another change.
    assert await client.receive() == {"id": op_id, "type": "complete"}
    await sync_to_async(ingest)(destinations[0].account_id)
    assert await client.nothing_pending()


async def test_since_replays_missed_changes_then_live_without_duplicates(
    ws_clients: Any, admin: Persona, destinations: list[Destination]
) -> None:
    before = timezone.now()
    await sync_to_async(ingest)(destinations[0].account_id, "missed")
    missed = sorted([str(pk) async for pk in DeliveryLog.objects.values_list("pk", flat=True)])

    client = await ws_clients()
    await client.init(admin.token)
    await client.subscribe(SUBSCRIPTION, {"since": before.isoformat()})
    replay = await collect(client, 2)
    assert sorted(replay) == [(log_id, "success") for log_id in missed]

    await sync_to_async(ingest)(destinations[0].account_id, "live")
    live = await collect(client, 6)
    assert {log_id for log_id, _ in live}.isdisjoint(missed)
    assert await client.nothing_pending()


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        (None, True),  # not a browser: no ambient credentials to abuse
        (b"http://testserver", True),  # the server's own origin
        (b"https://evil.example", False),
    ],
)
async def test_browser_origins_other_than_the_servers_own_are_refused(
    db: None, origin: bytes | None, accepted: bool
) -> None:
    headers = [(b"host", b"testserver")] + ([(b"origin", origin)] if origin else [])
    client, connected, _ = await connect(headers=headers)
    assert connected is accepted
    if connected:
        await client.close()


async def test_allowed_origin_setting_admits_a_listed_origin(db: None, settings: Any) -> None:
    from channels.testing import WebsocketCommunicator

    from schema import schema
    from schema.consumers import LiveConsumer

    settings.WS_ALLOWED_ORIGINS = ["https://dashboard.example"]
    app = LiveConsumer.build(schema)  # reads the setting when built, as at start-up
    communicator = WebsocketCommunicator(
        app,
        "/graphql/",
        subprotocols=["graphql-transport-ws"],
        headers=[(b"host", b"api.example"), (b"origin", b"https://dashboard.example")],
    )
    connected, _ = await communicator.connect()
    assert connected
    await communicator.disconnect()


OWN_FIELDS = """
subscription {
  logUpdates {
    __typename id status attemptCount webhookId eventId lastStatusCode lastError
    receivedTimestamp processedTimestamp nextAttemptAt
  }
}"""


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The log ids of each database read of the live stream (delivery.live._load)."""
    calls: list[list[int]] = []
    real = live._load

    def counted(log_ids: list[int]) -> Any:
        calls.append(sorted(log_ids))
        return real(log_ids)

    monkeypatch.setattr(live, "_load", counted)
    return calls


async def test_a_selection_of_the_logs_own_fields_is_served_from_the_messages(
    ws_clients: Any, admin: Persona, destinations: list[Destination], loads: list[list[int]]
) -> None:
    client = await ws_clients()
    await client.init(admin.token)
    await client.subscribe(OWN_FIELDS)
    await wait_subscribed(destinations[0].account_id)

    await sync_to_async(ingest)(destinations[0].account_id, "evt-own")

    updates = [(await client.next_data())["logUpdates"] for _ in range(6)]
    assert loads == []
    logs = [log async for log in DeliveryLog.objects.select_related("event").order_by("pk")]
    for log in logs:
        mine = [u for u in updates if u["id"] == str(log.pk)]
        assert [u["status"] for u in mine] == ["QUEUED", "SENDING", "SUCCESS"]
        assert [u["attemptCount"] for u in mine] == [0, 0, 1]
        assert [u["lastStatusCode"] for u in mine] == [None, None, 200]
        assert {(u["__typename"], u["webhookId"], u["eventId"]) for u in mine} == {
            ("DeliveryLog", log.webhook_id, "evt-own")
        }
        assert {u["receivedTimestamp"] for u in mine} == {log.received_timestamp.isoformat()}
        assert mine[-1]["processedTimestamp"] == log.processed_timestamp.isoformat()
        assert [u["nextAttemptAt"] is None for u in mine] == [False, False, True]
        assert [u["lastError"] for u in mine] == ["", "", ""]
    assert await client.nothing_pending()


async def test_a_selection_beyond_the_messages_reads_the_rows(
    ws_clients: Any, admin: Persona, destinations: list[Destination], loads: list[list[int]]
) -> None:
    client = await ws_clients()
    await client.init(admin.token)
    await client.subscribe(
        "subscription { logUpdates { id status attempts { number statusCode } } }"
    )
    await wait_subscribed(destinations[0].account_id)

    await sync_to_async(ingest)(destinations[0].account_id)

    updates = [(await client.next_data())["logUpdates"] for _ in range(6)]
    log_ids = sorted([pk async for pk in DeliveryLog.objects.values_list("pk", flat=True)])
    assert sorted({pk for load in loads for pk in load}) == log_ids
    success = [u for u in updates if u["status"] == "SUCCESS"]
    assert [u["attempts"] for u in success] == [[{"number": 1, "statusCode": 200}]] * 2


RESUME = """
subscription ($since: DateTime, $after: String) {
  logUpdates(since: $since, after: $after) { id status updatedAt cursor }
}"""


async def _logs_at(destinations: list[Destination], *moments: Any) -> list[DeliveryLog]:
    """One delivered event per moment (two logs each); the first log of each is then set to
    have changed at that moment, the second a minute after the last moment."""
    logs = []
    for moment in moments:
        await sync_to_async(ingest)(destinations[0].account_id)
        first, second = [log async for log in DeliveryLog.objects.order_by("-id")[:2]][::-1]
        await DeliveryLog.objects.filter(pk=first.pk).aupdate(updated_at=moment)
        await DeliveryLog.objects.filter(pk=second.pk).aupdate(
            updated_at=max(moments) + timedelta(minutes=1)
        )
        logs += [first, second]
    return [await DeliveryLog.objects.aget(pk=log.pk) for log in logs]


async def replayed(client: Any, count: int) -> list[dict[str, Any]]:
    return [(await client.next_data())["logUpdates"] for _ in range(count)]


async def test_since_is_exclusive_and_replays_in_updated_at_order(
    ws_clients: Any, admin: Persona, destinations: list[Destination]
) -> None:
    t = timezone.now() - timedelta(hours=1)
    _, a2, b1, b2 = await _logs_at(destinations, t, t + timedelta(seconds=1))

    client = await ws_clients()
    await client.init(admin.token)
    await client.subscribe(RESUME, {"since": t.isoformat()})  # a1 changed exactly then

    got = await replayed(client, 3)
    assert [u["id"] for u in got] == [str(b1.pk), str(a2.pk), str(b2.pk)]
    assert [u["updatedAt"] for u in got] == [log.updated_at.isoformat() for log in (b1, a2, b2)]
    assert [u["cursor"] for u in got] == [
        live.cursor(log.updated_at, log.pk) for log in (b1, a2, b2)
    ]
    assert await client.nothing_pending()


async def test_after_a_cursor_resumes_with_the_next_change_even_at_the_same_moment(
    ws_clients: Any, admin: Persona, destinations: list[Destination]
) -> None:
    t = timezone.now() - timedelta(hours=1)
    a1, a2, b1, b2 = await _logs_at(destinations, t, t)
    # a2 and b2 changed at the same moment too: only the id orders them.
    client = await ws_clients()
    await client.init(admin.token)
    await client.subscribe(RESUME, {"since": (t - timedelta(seconds=1)).isoformat()})
    everything = await replayed(client, 4)
    assert [u["id"] for u in everything] == [str(a1.pk), str(b1.pk), str(a2.pk), str(b2.pk)]
    await client.close()

    for seen in range(4):
        client = await ws_clients()
        await client.init(admin.token)
        await client.subscribe(RESUME, {"after": everything[seen]["cursor"]})
        rest = await replayed(client, 3 - seen)
        assert rest == everything[seen + 1 :]
        assert await client.nothing_pending()
        await client.close()


async def test_live_changes_carry_the_cursor_a_catch_up_would_give(
    ws_clients: Any, admin: Persona, destinations: list[Destination]
) -> None:
    client = await ws_clients()
    await client.init(admin.token)
    await client.subscribe(RESUME)
    await wait_subscribed(destinations[0].account_id)
    await sync_to_async(ingest)(destinations[0].account_id)

    finals: dict[str, Any] = {}
    while len(finals) < 2:  # each log's changes up to its success
        change = (await client.next_data())["logUpdates"]
        if change["status"] == "SUCCESS":
            finals[change["id"]] = change
    stored = {str(log.pk): log async for log in DeliveryLog.objects.all()}
    assert finals == {
        pk: {
            "id": pk,
            "status": "SUCCESS",
            "updatedAt": log.updated_at.isoformat(),
            "cursor": live.cursor(log.updated_at, log.pk),
        }
        for pk, log in stored.items()
    }


NOT_A_CURSOR = "`after` is not a cursor: pass a DeliveryLog.cursor as you received it."


@pytest.mark.parametrize(
    ("variables", "code", "text"),
    [
        ({"after": "not-a-cursor"}, "invalid_cursor", NOT_A_CURSOR),
        ({"after": live.cursor(timezone.now(), 1)[:-3]}, "invalid_cursor", NOT_A_CURSOR),
        (
            {"after": live.cursor(timezone.now(), 1), "since": "2026-01-01T00:00:00+00:00"},
            "invalid",
            "Pass `after` or `since`, not both.",
        ),
    ],
)
async def test_a_bad_resume_point_is_refused_with_its_code(
    ws_clients: Any,
    admin: Persona,
    destinations: list[Destination],
    variables: Any,
    code: str,
    text: str,
) -> None:
    client = await ws_clients()
    await client.init(admin.token)
    op_id = await client.subscribe(RESUME, variables)

    assert await client.receive() == {
        "id": op_id,
        "type": "next",
        "payload": {"data": None, "errors": [{"message": text, "extensions": {"code": code}}]},
    }
    assert await client.receive() == {"id": op_id, "type": "complete"}
    assert await live_subscribers(destinations[0].account_id) == 0


OWN = "subscription ($accountId: ID) { logUpdates(accountId: $accountId) { id status cursor } }"


async def test_identical_subscriptions_share_one_execution_per_change(
    ws_clients: Any,
    admin: Persona,
    normal_user: Persona,
    destinations: list[Destination],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Three sockets, two users, the same own-fields query: each change is executed once in the
    # process (the `cursor` resolver runs once per change); a fourth asking for another
    # account id spelling is a different operation, executed on its own.
    account_id = str(destinations[0].account_id)
    calls: list[int] = []
    real = live.cursor

    def counted(updated_at: Any, log_id: int) -> str:
        calls.append(log_id)
        return real(updated_at, log_id)

    monkeypatch.setattr(live, "cursor", counted)
    clients = []
    for persona in (admin, admin, normal_user):
        clients.append(client := await ws_clients())
        await client.init(persona.token)
        await client.subscribe(OWN, {"accountId": account_id})
    other = await ws_clients()
    await other.init(admin.token)
    await other.subscribe(OWN, {"accountId": account_id.upper()})
    await wait_subscribed(account_id, 4)

    await sync_to_async(ingest)(destinations[0].account_id, "shared")

    got = [await collect_data(client, 6) for client in [*clients, other]]
    assert got[0] == got[1] == got[2] == got[3]
    assert sorted(d["logUpdates"]["status"] for d in got[0]) == sorted(
        ["QUEUED", "SENDING", "SUCCESS"] * 2
    )
    assert len(calls) == 12  # 6 changes, once for the three alike and once for the fourth


async def test_identical_subscriptions_get_the_pipelines_own_text_encoded_once_per_change(
    ws_clients: Any,
    admin: Persona,
    destinations: list[Destination],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Three sockets with the same own-fields subscription (id "1"), the third with a second
    # one (id "2"): per change one of them goes through strawberry's result pipeline (it
    # executes the change) and the others get the text it writes, encoded once, without it.
    account_id = str(destinations[0].account_id)
    direct: list[str] = []
    real = subscriptions._DirectFrames.sent

    async def counted(self: Any, row: object) -> bool:
        sent: bool = await real(self, row)
        if sent:
            direct.append(self.operation_id)
        return sent

    monkeypatch.setattr(subscriptions._DirectFrames, "sent", counted)
    clients = []
    for _ in range(3):
        clients.append(client := await ws_clients())
        await client.init(admin.token)
        await client.subscribe(OWN, {"accountId": account_id})
    await clients[2].subscribe(OWN, {"accountId": account_id})
    await wait_subscribed(account_id, 4)

    await sync_to_async(ingest)(destinations[0].account_id, "direct")

    texts = [[await c.communicator.receive_from(5) for _ in range(6)] for c in clients[:2]]
    third = [await clients[2].communicator.receive_from(5) for _ in range(12)]
    firsts = [text for text in third if json.loads(text)["id"] == "1"]
    seconds = [text for text in third if json.loads(text)["id"] == "2"]
    assert texts[0] == texts[1] == firsts
    assert [s.replace('{"id":"2"', '{"id":"1"', 1) for s in seconds] == firsts
    assert firsts[0].startswith('{"id":"1","type":"next","payload":{"data":{"logUpdates":')
    statuses = [json.loads(text)["payload"]["data"]["logUpdates"]["status"] for text in firsts]
    assert sorted(statuses) == sorted(["QUEUED", "SENDING", "SUCCESS"] * 2)
    # 6 changes for 4 subscriptions, 6 of them through the pipeline.
    assert len(direct) == 18
    assert [await c.nothing_pending() for c in clients] == [True] * 3


async def collect_data(client: Any, count: int) -> list[dict[str, Any]]:
    return [await client.next_data() for _ in range(count)]


async def test_each_change_carries_its_own_cursor_when_the_row_is_read(
    ws_clients: Any, admin: Persona, destinations: list[Destination]
) -> None:
    # `destination` is not in the message: the row is read once per message (by then at its
    # last change), but `cursor` and `updatedAt` are still those of each change.
    query = """subscription ($accountId: ID) { logUpdates(accountId: $accountId) {
        id status cursor updatedAt destination { id } } }"""
    client = await ws_clients()
    await client.init(admin.token)
    await client.subscribe(query, {"accountId": str(destinations[0].account_id)})
    await wait_subscribed(destinations[0].account_id)

    await sync_to_async(ingest)(destinations[0].account_id, "own-cursor")
    changes = [(await client.next_data())["logUpdates"] for _ in range(6)]

    assert len({c["cursor"] for c in changes}) == 6
    for log_id in {c["id"] for c in changes}:
        mine = [c for c in changes if c["id"] == log_id]
        assert [c["status"] for c in mine] == ["QUEUED", "SENDING", "SUCCESS"]
        assert [c["cursor"] for c in mine] == [
            live.cursor(datetime.fromisoformat(c["updatedAt"]), int(log_id)) for c in mine
        ]
        assert [c["updatedAt"] for c in mine] == sorted(c["updatedAt"] for c in mine)

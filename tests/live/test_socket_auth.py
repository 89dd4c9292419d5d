"""Authorization of an open WebSocket as of now: only subscriptions run over it, and a token
revoked, expired or of a deactivated user closes it within LIVE_RECHECK_SECONDS, idle or not;
lost memberships end streams within the same bound; open sockets per user are limited."""

import asyncio
import json
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.core.cache import cache
from django.utils import timezone

from delivery import destinations, live, tasks
from delivery.models import DeliveryLog, Destination
from identity import services as identity_services
from identity.auth import token_issue
from identity.models import Account, AuthToken, Membership, Role, User
from schema import consumers
from tests.conftest import Persona
from tests.factories import PASSWORD, add_member, make_account
from tests.live.conftest import WSClient, wait_subscribed
from tests.sink import Sink

pytestmark = pytest.mark.django_db(transaction=True)

RECHECK = 0.2
# What "within LIVE_RECHECK_SECONDS" may take on a loaded test machine besides the interval.
SLACK = 0.8

SUBSCRIPTION = """
subscription ($accountId: ID, $filters: LogUpdateFilter, $since: DateTime) {
  logUpdates(accountId: $accountId, filters: $filters, since: $since) {
    id status account { id } destination { id signingSecret }
  }
}"""
NOT_ALLOWED = {
    "message": "Only subscriptions are served over the WebSocket; send queries and mutations to "
    "POST /graphql/.",
    "extensions": {"code": "operation_not_allowed"},
}


@pytest.fixture(autouse=True)
def _fast_recheck(settings: Any) -> None:
    settings.LIVE_RECHECK_SECONDS = RECHECK


@pytest.fixture
def destination(admin: Persona, sink: Sink) -> Destination:
    assert admin.user is not None
    return destinations.destination_create(
        actor=admin.user,
        account_id=admin.user.memberships.get().account_id,
        url=f"{sink.url}/a",
        http_method="POST",
    )


def ingest(account_id: Any) -> Any:
    return tasks.event_accept(account_id=account_id, event_id=None, payload={"n": 1}, size=8)


async def opened(persona: Persona, ws_clients: Any) -> WSClient:
    client: WSClient = await ws_clients()
    assert await client.init(persona.token) == {"type": "connection_ack"}
    return client


async def closed_within(client: WSClient, started: float, bound: float) -> dict[str, Any]:
    """The close frame the server sends, asserting it came within `bound` of `started`."""
    output: dict[str, Any] = await client.communicator.receive_output(timeout=bound + 5)
    elapsed = time.monotonic() - started
    assert output["type"] == "websocket.close", output
    assert elapsed <= bound, f"closed after {elapsed:.2f}s, bound {bound}s"
    return output


# --- A token that stops being valid closes the socket, even when idle ------------------------


def _logout(persona: Persona) -> None:
    identity_services.user_logout(actor=persona.user, token=persona.token)  # type: ignore[arg-type]


def _password_change(persona: Persona) -> None:
    # Made with another token of the user: the socket's token is one of the "other" tokens.
    assert persona.user is not None
    identity_services.user_update(
        actor=persona.user,
        user_id=persona.user.pk,
        password="Another-" + PASSWORD,
        current_password=PASSWORD,
        current_token=token_issue(user=persona.user),
    )


def _deactivate(persona: Persona) -> None:
    User.objects.filter(pk=persona.user.pk).update(is_active=False)  # type: ignore[union-attr]


def _expire(persona: Persona) -> None:
    AuthToken.objects.filter(user=persona.user).update(expires_at=timezone.now())


@pytest.mark.parametrize(
    "change", [_logout, _password_change, _deactivate, _expire], ids=lambda f: f.__name__[1:]
)
@pytest.mark.parametrize("subscribed", [False, True], ids=["no_operation", "idle_stream"])
async def test_invalidated_token_closes_the_idle_socket_with_4403_within_the_bound(
    ws_clients: Any, admin: Persona, destination: Destination, change: Any, subscribed: bool
) -> None:
    client = await opened(admin, ws_clients)
    if subscribed:
        await client.subscribe(SUBSCRIPTION)
        await wait_subscribed(destination.account_id)

    await sync_to_async(change)(admin)
    started = time.monotonic()

    output = await closed_within(client, started, RECHECK + SLACK)
    assert output == {"type": "websocket.close", "code": 4403, "reason": "Token revoked or expired"}


async def test_a_valid_token_keeps_the_socket_open(ws_clients: Any, admin: Persona) -> None:
    client = await opened(admin, ws_clients)
    assert await client.communicator.receive_nothing(timeout=RECHECK * 4)


async def test_one_watchdog_task_rechecks_every_socket_of_the_process(
    ws_clients: Any, admin: Persona, normal_user: Persona
) -> None:
    admins = [await opened(admin, ws_clients) for _ in range(2)]
    other = await opened(normal_user, ws_clients)
    watching = [t for t in asyncio.all_tasks() if "_Watchdog._run" in repr(t.get_coro())]
    assert len(watching) == 1

    await sync_to_async(_logout)(admin)
    started = time.monotonic()

    for client in admins:
        output = await closed_within(client, started, RECHECK + SLACK)
        assert output["code"] == 4403
    assert await other.communicator.receive_nothing(timeout=RECHECK * 3)


def _receiving(layer: Any) -> set[str]:
    """The channels this process receives on (the in-memory layer's queues, channels_redis'
    pub/sub layer's: both are made by `new_channel` or `receive`)."""
    return set(layer.channels)


async def test_sockets_take_no_channel_layer_channel_of_their_own(
    ws_clients: Any, admin: Persona, destination: Destination
) -> None:
    layer = get_channel_layer()
    first = await opened(admin, ws_clients)
    await first.subscribe(SUBSCRIPTION)
    await wait_subscribed(destination.account_id)
    before = _receiving(layer)

    for _ in range(3):
        client = await opened(admin, ws_clients)
        await client.subscribe(SUBSCRIPTION)
    await wait_subscribed(destination.account_id, 4)

    # The process hub's one channel serves every stream; a socket adds no receiver.
    assert _receiving(layer) == before
    assert len([c for c in before if "specific." in c]) == 1


async def test_an_authorization_check_that_fails_closes_the_socket_with_1011(
    ws_clients: Any, admin: Persona, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await opened(admin, ws_clients)

    async def down(raw: object) -> None:
        raise RuntimeError("database down")

    monkeypatch.setattr(consumers, "peek_socket_user", lambda raw, default: default)
    monkeypatch.setattr(consumers, "socket_user", down)
    started = time.monotonic()

    output = await closed_within(client, started, RECHECK + SLACK)
    assert output == {
        "type": "websocket.close",
        "code": 1011,
        "reason": "Authorization check failed",
    }


async def test_an_interruption_of_the_live_feed_closes_every_socket_with_1012(
    ws_clients: Any, admin: Persona, destination: Destination
) -> None:
    """The hub reports that its channel-layer connection came back (changes published
    meanwhile never reached this process): every socket is closed with a code that clients
    retry, so that they reconnect and resume with `after`."""
    clients = [await opened(admin, ws_clients) for _ in range(2)]
    await clients[0].subscribe(SUBSCRIPTION)
    await wait_subscribed(destination.account_id)

    for interrupted in live._interruption_handlers[asyncio.get_running_loop()]:
        interrupted()

    for client in clients:
        assert await client.communicator.receive_output(timeout=5) == {
            "type": "websocket.close",
            "code": 1012,
            "reason": "Live updates interrupted: reconnect and resume with after",
        }


def test_slots_refresh_keeps_its_own_slots_and_takes_back_only_free_ones() -> None:
    prefix = f"ws-slot:test-{time.monotonic_ns()}"
    mine, lapsed, taken = f"{prefix}:0", f"{prefix}:1", f"{prefix}:2"
    cache.set(mine, "me", timeout=1)
    cache.set(taken, "someone else", timeout=60)

    consumers.slots_refresh([(mine, "me"), (lapsed, "me"), (taken, "me")])

    assert cache.get_many([mine, lapsed, taken]) == {
        mine: "me",
        lapsed: "me",
        taken: "someone else",
    }
    time.sleep(1.2)  # past the slot's old expiry: its refresh gave it SLOT_TTL_SECONDS
    assert cache.get(mine) == "me"
    cache.delete_many([mine, lapsed, taken])


# --- Only subscriptions over the socket ------------------------------------------------------


def _world(account: Account) -> dict[str, Any]:
    account.refresh_from_db()
    return {
        "account": (account.name, account.secret_hash, account.secret_prefix),
        "tokens": sorted(AuthToken.objects.values_list("key_hash", flat=True)),
        "users": sorted(User.objects.values_list("email", "full_name", "password")),
    }


OPERATIONS = {
    "me": "{ me { id email } }",
    "named_query": "query Me { me { id } }",
    "accountUpdate": 'mutation ($id: ID!) { accountUpdate(id: $id, input: {name: "Renamed"}) '
    "{ __typename } }",
    "accountRotateSecret": "mutation ($id: ID!) { accountRotateSecret(id: $id) "
    "{ ... on AccountSecret { secret } } }",
    "login": 'mutation { login(input: {email: "admin@example.com", password: "'
    + PASSWORD
    + '"}) { ... on AuthPayload { token } } }',
    "logout": "mutation { logout { __typename } }",
    "userUpdate": 'mutation ($uid: ID!) { userUpdate(id: $uid, input: {fullName: "X"}) '
    "{ __typename } }",
}


@pytest.mark.parametrize("name", list(OPERATIONS))
async def test_queries_and_mutations_over_the_socket_are_refused_and_run_nothing(
    ws_clients: Any, admin: Persona, account: Account, name: str
) -> None:
    client = await opened(admin, ws_clients)
    before = await sync_to_async(_world)(account)
    assert admin.user is not None

    op_id = await client.subscribe(OPERATIONS[name], {"id": str(account.pk), "uid": admin.user.pk})

    assert await client.receive() == {"id": op_id, "type": "error", "payload": [NOT_ALLOWED]}
    assert await client.nothing_pending()
    assert await sync_to_async(_world)(account) == before
    # The socket still serves subscriptions, and the same id may be used again.
    await client.send(
        {"id": op_id, "type": "subscribe", "payload": {"query": SUBSCRIPTION, "variables": {}}}
    )
    await wait_subscribed(account.pk)


async def test_a_document_with_a_query_and_a_subscription_runs_only_the_subscription(
    ws_clients: Any, admin: Persona, account: Account
) -> None:
    client = await opened(admin, ws_clients)
    document = "query Q { me { id } } " + SUBSCRIPTION.replace("subscription (", "subscription S (")
    await client.send(
        {"id": "q", "type": "subscribe", "payload": {"query": document, "operationName": "Q"}}
    )
    assert await client.receive() == {"id": "q", "type": "error", "payload": [NOT_ALLOWED]}
    await client.send(
        {"id": "s", "type": "subscribe", "payload": {"query": document, "operationName": "S"}}
    )
    await wait_subscribed(account.pk)


# --- Roles and memberships as of now ---------------------------------------------------------


async def test_demoted_admin_stops_seeing_signing_secrets_from_the_next_event(
    ws_clients: Any, admin: Persona, destination: Destination
) -> None:
    client = await opened(admin, ws_clients)
    await client.subscribe(SUBSCRIPTION, {"accountId": str(destination.account_id)})
    await wait_subscribed(destination.account_id)
    await sync_to_async(ingest)(destination.account_id)
    first = [(await client.next_data())["logUpdates"] for _ in range(3)]
    assert {u["destination"]["signingSecret"] for u in first} == {destination.signing_secret}

    await Membership.objects.filter(user=admin.user).aupdate(role=Role.NORMAL_USER)
    demoted = time.monotonic()
    while time.monotonic() - demoted < RECHECK * 1.5:  # let the bound pass, without events
        assert await client.communicator.receive_nothing(timeout=0.05)

    await sync_to_async(ingest)(destination.account_id)
    later = [(await client.next_data())["logUpdates"] for _ in range(3)]
    assert [u["destination"]["signingSecret"] for u in later] == [None, None, None]


@pytest.mark.parametrize("loss", ["member_removed", "account_deleted"])
async def test_losing_access_ends_the_idle_stream_within_the_bound(
    ws_clients: Any, admin: Persona, normal_user: Persona, destination: Destination, loss: str
) -> None:
    persona = normal_user if loss == "member_removed" else admin
    client = await opened(persona, ws_clients)
    op_id = await client.subscribe(SUBSCRIPTION, {"accountId": str(destination.account_id)})
    await wait_subscribed(destination.account_id)

    if loss == "member_removed":
        await Membership.objects.filter(user=normal_user.user).adelete()
    else:
        await Account.objects.filter(pk=destination.account_id).adelete()
    started = time.monotonic()

    message = await client.receive(timeout=RECHECK + SLACK + 5)
    assert time.monotonic() - started <= RECHECK + SLACK
    assert message == {"id": op_id, "type": "complete"}


async def test_losing_one_account_keeps_the_stream_of_the_others(
    ws_clients: Any, admin: Persona, normal_user: Persona, destination: Destination, sink: Sink
) -> None:
    assert normal_user.user is not None
    assert admin.user is not None
    second, _ = await sync_to_async(make_account)(admin=admin.user, name="Second")
    await sync_to_async(add_member)(second, normal_user.user)
    await sync_to_async(destinations.destination_create)(
        actor=admin.user, account_id=second.pk, url=f"{sink.url}/b", http_method="POST"
    )
    client = await opened(normal_user, ws_clients)
    op_id = await client.subscribe(SUBSCRIPTION)  # every account of theirs
    await wait_subscribed(destination.account_id)
    await wait_subscribed(second.pk)

    await Membership.objects.filter(user=normal_user.user, account=second).adelete()
    removed = time.monotonic()
    while time.monotonic() - removed < RECHECK * 1.5:
        assert await client.communicator.receive_nothing(timeout=0.05)
    await sync_to_async(ingest)(second.pk)
    await sync_to_async(ingest)(destination.account_id)

    updates = [(await client.next_data())["logUpdates"] for _ in range(3)]
    assert {u["account"]["id"] for u in updates} == {str(destination.account_id)}
    assert await client.nothing_pending()
    assert op_id == "1"


# --- The live filters are the selectors' -----------------------------------------------------


@pytest.mark.parametrize("value", ["not-a-number", "-1", "1.5", "99999999999999999999"])
async def test_malformed_destination_filter_matches_nothing_like_the_logs_query(
    ws_clients: Any, admin: Persona, destination: Destination, value: str
) -> None:
    before = timezone.now()
    await sync_to_async(ingest)(destination.account_id)
    client = await opened(admin, ws_clients)
    await client.subscribe(
        SUBSCRIPTION, {"filters": {"destination": value}, "since": before.isoformat()}
    )
    await wait_subscribed(destination.account_id)
    await sync_to_async(ingest)(destination.account_id)
    assert await client.nothing_pending()
    assert await DeliveryLog.objects.acount() == 2


# --- Open sockets per user -------------------------------------------------------------------


async def test_open_sockets_per_user_are_limited(
    ws_clients: Any, admin: Persona, normal_user: Persona, settings: Any
) -> None:
    settings.WS_MAX_CONNECTIONS_PER_USER = 2
    assert admin.user is not None
    first = await opened(admin, ws_clients)
    await opened(
        Persona("admin", admin.user, await sync_to_async(token_issue)(user=admin.user)), ws_clients
    )

    third = await ws_clients()
    await third.send({"type": "connection_init", "payload": {"authToken": admin.token}})
    assert await third.communicator.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": 4429,
        "reason": "Too many open connections",
    }
    await opened(normal_user, ws_clients)  # another user is not affected

    await first.close()  # a closed socket frees its slot
    await opened(admin, ws_clients)


# --- Malformed messages answer, never hang ---------------------------------------------------


@pytest.mark.parametrize("depth", [100_000, 5_000, 990, 65])
async def test_deeply_nested_variables_close_the_socket_with_4400_instead_of_hanging(
    ws_clients: Any, admin: Persona, account: Account, depth: int
) -> None:
    client = await opened(admin, ws_clients)
    await client.communicator.send_to(text_data=_subscribe_with_nested_filters(depth))
    assert await client.communicator.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": 4400,
        "reason": "WebSocket message nested too deeply",
    }
    await opened(admin, ws_clients)  # the server is still alive for the next socket


async def test_moderately_nested_variables_get_an_error_answer(
    ws_clients: Any, admin: Persona, account: Account
) -> None:
    client = await opened(admin, ws_clients)
    await client.communicator.send_to(text_data=_subscribe_with_nested_filters(40))
    message = await client.receive()
    assert (message["id"], message["type"]) == ("1", "error"), message
    assert [e["message"][:40] for e in message["payload"]] == [
        "Variable '$filters' has invalid value: E"
    ]


def _subscribe_with_nested_filters(depth: int) -> str:
    nested = '{"a":' * depth + "1" + "}" * depth
    return (
        '{"id":"1","type":"subscribe","payload":{"query":'
        + json.dumps(SUBSCRIPTION)
        + ',"variables":{"filters":'
        + nested
        + "}}}"
    )

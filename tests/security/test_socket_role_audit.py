"""The role-matrix audit over the WebSocket transport, generated from the same table and schema
as tests/security/test_role_audit.py.

Only subscriptions are served over the socket: every query and mutation of the schema, sent by
the outsider, the normal user and the admin (fresh, and again after logout, demotion and
deactivation), is refused with `operation_not_allowed` and writes nothing; after logout or
deactivation the socket is closed with 4403 within LIVE_RECHECK_SECONDS. Anonymous callers never
get past `connection_init`. `logUpdates` keeps its role matrix in every state."""

import json
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from identity import services as identity_services
from identity.models import Membership, Role, User
from tests.conftest import Persona
from tests.live.conftest import WSClient, connect
from tests.security import test_role_audit
from tests.security.test_role_audit import (
    AUDIT,
    NOT_FOUND,
    QUERIES_AND_MUTATIONS,
    SUBSCRIPTIONS,
    Allowed,
    World,
    assert_no_leak,
    db_rows,
    operation,
)

pytestmark = pytest.mark.django_db(transaction=True)
world = test_role_audit.world  # the same fixture: Acme and what points at it

RECHECK = 0.2
BOUND = RECHECK + 0.8  # LIVE_RECHECK_SECONDS plus what a loaded test machine needs
NOT_ALLOWED = {
    "message": "Only subscriptions are served over the WebSocket; send queries and mutations to "
    "POST /graphql/.",
    "extensions": {"code": "operation_not_allowed"},
}
STATES = ["fresh", "logout", "demotion", "deactivation"]
CLOSES = {"logout", "deactivation"}  # the token stops being valid: the socket closes


@pytest.fixture(autouse=True)
def _fast_recheck(settings: Any) -> None:
    settings.LIVE_RECHECK_SECONDS = RECHECK


@pytest.fixture(autouse=True)
async def _close_connections() -> Any:
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


def change(state: str, persona: Persona) -> None:
    user = persona.user
    assert user is not None
    if state == "logout":
        identity_services.user_logout(actor=user, token=persona.token)
    elif state == "demotion":  # every role of theirs becomes NORMAL_USER
        Membership.objects.filter(user=user).update(role=Role.NORMAL_USER)
    elif state == "deactivation":
        User.objects.filter(pk=user.pk).update(is_active=False)


async def opened(persona: Persona) -> WSClient:
    client, connected, _ = await connect()
    assert connected
    assert await client.init(persona.token) == {"type": "connection_ack"}
    return client


async def output(client: WSClient, timeout: float) -> dict[str, Any]:
    frame: dict[str, Any] = await client.communicator.receive_output(timeout=timeout)
    if frame["type"] == "websocket.send":
        message: dict[str, Any] = json.loads(frame["text"])
        return message
    return frame


async def test_anonymous_never_gets_past_connection_init(
    personas: dict[str, Persona], world: World
) -> None:
    before = await sync_to_async(db_rows)()
    for name in [*QUERIES_AND_MUTATIONS, *SUBSCRIPTIONS]:
        client, _, _ = await connect()
        variables = await sync_to_async(AUDIT[name].args)(world)
        query = operation(name, variables)
        await client.send(
            {"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}}
        )
        assert await client.communicator.receive_output(timeout=5) == {
            "type": "websocket.close",
            "code": 4401,
            "reason": "Unauthorized",
        }
        await client.close()
    client, _, _ = await connect()
    await client.send({"type": "connection_init", "payload": {"authToken": None}})
    assert await client.communicator.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": 4401,
        "reason": "Invalid, expired or revoked token",
    }
    await client.close()
    assert await sync_to_async(db_rows)() == before


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("persona", ["outsider", "normal_user", "admin"])
async def test_every_query_and_mutation_over_the_socket_is_refused_and_writes_nothing(
    personas: dict[str, Persona], world: World, persona: str, state: str
) -> None:
    client = await opened(personas[persona])
    try:
        await sync_to_async(change)(state, personas[persona])
        changed = time.monotonic()
        before = await sync_to_async(db_rows)()
        ids = {}
        for number, name in enumerate(QUERIES_AND_MUTATIONS, 1):
            variables = await sync_to_async(AUDIT[name].args)(world)
            ids[str(number)] = name
            await client.send(
                {
                    "id": str(number),
                    "type": "subscribe",
                    "payload": {"query": operation(name, variables), "variables": variables},
                }
            )
        answered = []
        closed = None
        while len(answered) < len(ids):
            message = await output(client, timeout=BOUND + 5)
            if message["type"] == "websocket.close":
                closed = message
                break
            assert message == {"id": message["id"], "type": "error", "payload": [NOT_ALLOWED]}, (
                ids.get(message["id"]),
                message,
            )
            answered.append(message["id"])
        assert answered == list(ids)[: len(answered)]
        if state in CLOSES:
            if closed is None:
                closed = await output(client, timeout=BOUND + 5)
            assert closed == {
                "type": "websocket.close",
                "code": 4403,
                "reason": "Token revoked or expired",
            }
            assert time.monotonic() - changed <= BOUND
        else:
            assert closed is None
            assert len(answered) == len(ids)
            assert await client.communicator.receive_nothing(timeout=RECHECK * 2)
        assert await sync_to_async(db_rows)() == before, f"something was written as {persona}"
    finally:
        await client.close()


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("persona", ["anonymous", "outsider", "normal_user", "admin"])
async def test_log_updates_role_matrix_in_every_state(
    personas: dict[str, Persona], world: World, persona: str, state: str
) -> None:
    name = "Subscription.logUpdates"
    audit = AUDIT[name]
    client, connected, _ = await connect()
    assert connected
    try:
        if persona == "anonymous":
            await client.send({"type": "connection_init", "payload": {"authToken": None}})
            assert await client.communicator.receive_output(timeout=5) == {
                "type": "websocket.close",
                "code": 4401,
                "reason": "Invalid, expired or revoked token",
            }
            return
        assert await client.init(personas[persona].token) == {"type": "connection_ack"}
        await sync_to_async(change)(state, personas[persona])
        changed = time.monotonic()
        if state in CLOSES:
            closed = await output(client, timeout=BOUND + 5)
            assert closed == {
                "type": "websocket.close",
                "code": 4403,
                "reason": "Token revoked or expired",
            }
            assert time.monotonic() - changed <= BOUND
            return
        while time.monotonic() - changed < RECHECK:  # the bound passes, nothing is sent
            assert await client.communicator.receive_nothing(timeout=0.05)
        variables = await sync_to_async(audit.args)(world)
        op_id = await client.subscribe(operation(name, variables), variables)
        message = await client.receive()
        text = json.dumps(message)
        demoted_admin = persona == "admin" and state == "demotion"
        assert_no_leak(name, "normal_user" if demoted_admin else persona, text, world)
        assert message["id"] == op_id
        assert message["type"] == "next", message
        outcome = audit.expect(persona)
        if outcome == NOT_FOUND:
            codes = [e["extensions"]["code"] for e in message["payload"]["errors"]]
            assert codes == ["not_found"], message
            assert (await client.receive())["type"] == "complete"
        else:
            assert isinstance(outcome, Allowed)
            assert outcome.check is not None
            data = message["payload"]["data"]["logUpdates"]
            assert outcome.check(data, world, personas[persona]), message
            expected = world.secret if persona == "admin" and state == "fresh" else None
            assert data["destination"]["signingSecret"] == expected
    finally:
        await client.close()

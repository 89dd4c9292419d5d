"""GraphQL limits that tests/schema/test_error_policy.py and tests/schema_delivery do not cover
already (they test depth and aliases at and past the limit, tokens past it, and `logs(first:)`
past 100): the token limit exactly at 2000, depth hidden in fragments, aliases used to try many
passwords in one request, and every limit — and the refusal of NUL — on the WebSocket path,
where subscriptions are validated by the same schema."""

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from graphql.language import Lexer, Source, TokenKind

from identity.models import AuthToken
from tests.conftest import GraphQL, Persona
from tests.live.conftest import connect


def token_count(query: str) -> int:
    lexer = Lexer(Source(query))
    count = 0
    while lexer.advance().kind != TokenKind.EOF:
        count += 1
    return count


def statuses_query(tokens: int) -> str:
    """A valid query of exactly `tokens` tokens: a long list literal costs one token per item
    and nothing else (repeating a field would hit the field-merging budget first)."""
    prefix, suffix = "{ logs(filters: {status: [", "]}) { totalCount } }"
    items = tokens - token_count(prefix + suffix)
    return prefix + " FAILED" * items + suffix


def test_query_of_exactly_the_token_limit_runs(gql: GraphQL, admin: Persona) -> None:
    query = statuses_query(settings.GRAPHQL_MAX_TOKENS)
    assert token_count(query) == 2000

    assert gql(query, persona=admin) == {"data": {"logs": {"totalCount": 0}}}


def test_query_one_token_over_the_limit_is_refused(gql: GraphQL, admin: Persona) -> None:
    body = gql(statuses_query(settings.GRAPHQL_MAX_TOKENS + 1), persona=admin)

    assert body["data"] is None
    assert [e["message"] for e in body["errors"]] == [
        "Syntax Error: Document contains more than 2000 tokens. Parsing aborted."
    ]


def test_depth_hidden_in_fragments_is_counted(gql: GraphQL, admin: Persona) -> None:
    query = """
      fragment A on Account { members { account { ...B } } }
      fragment B on Account { members { account { ...C } } }
      fragment C on Account {
        members { account { members { account { members { account { id } } } } } }
      }
      { accounts { ...A } }"""

    body = gql(query, persona=admin)

    assert body["data"] is None
    assert [e["message"] for e in body["errors"]] == [
        "'anonymous' exceeds maximum operation depth of 10"
    ]


def _logins(count: int, password: str) -> str:
    calls = " ".join(
        f'a{i}: login(input: {{email: "normal@example.com", password: "{password}"}}) '
        "{ __typename ... on OperationInfo { messages { code } } }"
        for i in range(count)
    )
    return "mutation { " + calls + " }"


def test_aliases_cannot_carry_more_than_15_password_guesses(
    gql: GraphQL, normal_user: Persona
) -> None:
    tokens = AuthToken.objects.count()

    body = gql(_logins(16, "guess"))

    assert body == {"data": None, "errors": [{"message": "16 aliases found. Allowed: 15"}]}
    assert AuthToken.objects.count() == tokens


def test_aliased_password_guesses_are_each_counted_by_the_login_throttle(
    gql: GraphQL, normal_user: Persona
) -> None:
    assert settings.LOGIN_FAILURES_PER_EMAIL_ADDRESS == "5/15minute"

    body = gql(_logins(15, "guess"))

    codes = [body["data"][f"a{i}"]["messages"][0]["code"] for i in range(15)]
    assert codes == ["invalid_credentials"] * 5 + ["throttled"] * 10


# --- The same limits over WebSocket -------------------------------------------------------------


def _nested_subscription(depth: int) -> str:
    """`logUpdates { account { members { account { … { id } } } } }` with its leaf `depth`
    levels below the root field."""
    containers = ["account" if level % 2 else "members" for level in range(1, depth)]
    inner = " { ".join(containers) + " { id" + " }" * len(containers)
    return "subscription { logUpdates { " + inner + " } }"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("query", "variables", "message"),
    [
        pytest.param(
            _nested_subscription(settings.GRAPHQL_MAX_DEPTH + 1),
            {},
            "'anonymous' exceeds maximum operation depth of 10",
            id="depth",
        ),
        pytest.param(
            "subscription { logUpdates { " + " ".join(f"a{i}: id" for i in range(16)) + " } }",
            {},
            "16 aliases found. Allowed: 15",
            id="aliases",
        ),
        pytest.param(
            "subscription ($f: LogUpdateFilter) { logUpdates(filters: $f) { id } }",
            {"f": {"eventId": "a\x00b"}},
            "Text must not contain NUL characters.",
            id="nul",
        ),
    ],
)
async def test_subscription_limits_apply_over_websocket(
    admin: Persona, query: str, variables: dict[str, Any], message: str
) -> None:
    from django.db import connections

    client, connected, _ = await connect()
    assert connected
    try:
        assert await client.init(admin.token) == {"type": "connection_ack"}
        op_id = await client.subscribe(query, variables)
        answer = await client.receive()
        assert answer["id"] == op_id
        assert answer["type"] == "error", answer
        assert [e["message"] for e in answer["payload"]] == [message]
        assert await client.nothing_pending()
    finally:
        await client.close()
        await sync_to_async(connections.close_all)()


@pytest.mark.django_db(transaction=True)
async def test_subscription_at_the_depth_limit_is_accepted(admin: Persona) -> None:
    from django.db import connections

    client, _, _ = await connect()
    try:
        assert await client.init(admin.token) == {"type": "connection_ack"}
        await client.subscribe(_nested_subscription(settings.GRAPHQL_MAX_DEPTH))
        assert await client.nothing_pending()  # subscribed, waiting for changes; no error
    finally:
        await client.close()
        await sync_to_async(connections.close_all)()


@pytest.mark.django_db(transaction=True)
async def test_subscription_over_the_token_limit_closes_the_socket(admin: Persona) -> None:
    # graphql-transport-ws: a document that does not parse closes the socket with 4400.
    from django.db import connections

    client, _, _ = await connect()
    try:
        assert await client.init(admin.token) == {"type": "connection_ack"}
        await client.subscribe("subscription { logUpdates { " + "id " * 2000 + "} }")
        closed = await client.communicator.receive_output(timeout=5)
        assert closed == {
            "type": "websocket.close",
            "code": 4400,
            "reason": "Syntax Error: Document contains more than 2000 tokens. Parsing aborted.",
        }
    finally:
        await client.close()
        await sync_to_async(connections.close_all)()

"""How errors reach clients: unexpected ones are masked (and logged), and the query limits
(depth, aliases, tokens) refuse an operation before any resolver runs."""

import logging
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from identity import selectors, services
from tests.conftest import GraphQL, Persona

SECRET_DETAIL = "connection to 10.1.2.3 refused, password=hunter2"


def _boom(**kwargs: Any) -> Any:
    raise RuntimeError(SECRET_DETAIL)


def _nested(depth: int) -> str:
    """`{ accounts { members { account { members { … { id } } } } } }` whose leaf field is
    `depth` levels below the root field (the root field is at depth 0)."""
    containers = ["accounts"] + ["members" if level % 2 else "account" for level in range(1, depth)]
    return "{ " + " { ".join(containers) + " { id" + " }" * len(containers) + " }"


def _aliases(count: int) -> str:
    return "{ " + " ".join(f"a{i}: me {{ id }}" for i in range(count)) + " }"


def _without_locations(body: dict[str, Any]) -> dict[str, Any]:
    errors = [{k: v for k, v in e.items() if k != "locations"} for e in body["errors"]]
    return {**body, "errors": errors}


# --- masking ----------------------------------------------------------------------------------


def test_unexpected_error_in_query_is_masked_and_logged(
    gql: GraphQL,
    admin: Persona,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(selectors, "account_list", _boom)

    with caplog.at_level(logging.ERROR, logger="datapusher.graphql"):
        response = gql.client.post(
            "/graphql/",
            {"query": "{ accounts { id } }"},
            content_type="application/json",
            headers={"Authorization": f"Bearer {admin.token}"},
        )

    assert response.status_code == 200
    assert _without_locations(response.json()) == {
        "data": None,
        "errors": [{"message": "Unexpected error.", "path": ["accounts"]}],
    }
    text = response.content.decode()
    for leak in ("hunter2", "10.1.2.3", "RuntimeError", "Traceback", "selectors"):
        assert leak not in text
    logged = [r for r in caplog.records if r.name == "datapusher.graphql"]
    assert [(r.levelname, r.getMessage()) for r in logged] == [
        ("ERROR", "Unexpected GraphQL error")
    ]
    assert logged[0].exc_info is not None
    assert logged[0].exc_info[1] is not None
    assert str(logged[0].exc_info[1]) == SECRET_DETAIL


def test_unexpected_error_in_mutation_is_masked(
    gql: GraphQL, admin: Persona, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "account_create", _boom)

    body = gql(
        'mutation { accountCreate(input: {name: "X"}) { __typename } }',
        persona=admin,
    )

    assert _without_locations(body) == {
        "data": None,
        "errors": [{"message": "Unexpected error.", "path": ["accountCreate"]}],
    }


def test_expected_errors_keep_their_message_and_code(gql: GraphQL, anonymous: Persona) -> None:
    body = gql("{ accounts { id } }", persona=anonymous)

    assert _without_locations(body) == {
        "data": None,
        "errors": [
            {
                "message": "Authentication required.",
                "path": ["accounts"],
                "extensions": {"code": "unauthenticated"},
            }
        ],
    }


# --- limits -----------------------------------------------------------------------------------


def test_query_at_the_depth_limit_runs(gql: GraphQL, admin: Persona) -> None:
    assert settings.GRAPHQL_MAX_DEPTH == 10

    body = gql(_nested(settings.GRAPHQL_MAX_DEPTH), persona=admin)

    assert "errors" not in body
    assert len(body["data"]["accounts"]) == 1


def test_query_past_the_depth_limit_is_refused_before_running(gql: GraphQL, admin: Persona) -> None:
    query = _nested(settings.GRAPHQL_MAX_DEPTH + 1)
    gql("{ me { id } }", persona=admin)

    with CaptureQueriesContext(connection) as captured:
        body = gql(query, persona=admin)

    assert _without_locations(body) == {
        "data": None,
        "errors": [{"message": "'anonymous' exceeds maximum operation depth of 10"}],
    }
    # Only the token lookup: no resolver ran.
    assert len(captured.captured_queries) == 1


def test_query_at_the_alias_limit_runs(gql: GraphQL, admin: Persona) -> None:
    assert settings.GRAPHQL_MAX_ALIASES == 15

    body = gql(_aliases(15), persona=admin)

    assert "errors" not in body
    assert len(body["data"]) == 15


def test_query_past_the_alias_limit_is_refused(gql: GraphQL, admin: Persona) -> None:
    body = gql(_aliases(16), persona=admin)

    assert body == {"data": None, "errors": [{"message": "16 aliases found. Allowed: 15"}]}


def test_query_past_the_token_limit_is_refused(gql: GraphQL, admin: Persona) -> None:
    query = "{ " + "me { id } " * (settings.GRAPHQL_MAX_TOKENS // 4 + 1) + "}"

    body = gql(query, persona=admin)

    assert body["data"] is None
    assert [e["message"] for e in body["errors"]] == [
        "Syntax Error: Document contains more than 2000 tokens. Parsing aborted."
    ]

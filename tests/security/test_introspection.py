"""Introspection answers only when GRAPHQL_INTROSPECTION is on (default: DEBUG). The schema is
public in schema.graphql anyway; turning introspection off in production removes the cheapest
map of the API for a scanner and a large, costly query."""

import pytest
from django.test import override_settings

from tests.conftest import GraphQL, Persona

SCHEMA = "{ __schema { queryType { name } } }"
TYPE = '{ __type(name: "Destination") { name } }'


def refused(field: str, column: int) -> dict[str, object]:
    return {
        "message": "GraphQL introspection has been disabled, but the requested query "
        f"contained the field '{field}'.",
        "locations": [{"line": 1, "column": column}],
    }


@pytest.mark.parametrize(
    ("query", "errors"),
    [
        # `queryType` is refused too: its type (__Type) is an introspection type.
        (SCHEMA, [refused("__schema", 3), refused("queryType", 14)]),
        (TYPE, [refused("__type", 3)]),
    ],
)
@pytest.mark.parametrize("persona", ["admin", "anonymous"])
@override_settings(GRAPHQL_INTROSPECTION=False)
def test_introspection_is_refused_when_the_setting_is_off(
    gql: GraphQL,
    personas: dict[str, Persona],
    persona: str,
    query: str,
    errors: list[dict[str, object]],
) -> None:
    body = gql(query, persona=personas[persona])

    assert body == {"data": None, "errors": errors}


@override_settings(GRAPHQL_INTROSPECTION=False)
def test_typename_and_ordinary_queries_still_work_with_introspection_off(
    gql: GraphQL, admin: Persona
) -> None:
    body = gql("{ __typename me { email } }", persona=admin)

    assert body == {"data": {"__typename": "Query", "me": {"email": "admin@example.com"}}}


@pytest.mark.parametrize(
    ("query", "data"),
    [
        (SCHEMA, {"__schema": {"queryType": {"name": "Query"}}}),
        (TYPE, {"__type": {"name": "Destination"}}),
    ],
)
@override_settings(GRAPHQL_INTROSPECTION=True)
def test_introspection_answers_when_the_setting_is_on(
    gql: GraphQL, anonymous: Persona, query: str, data: dict[str, object]
) -> None:
    assert gql(query, persona=anonymous) == {"data": data}

"""The delivery fields resolve under async execution too (the WebSocket transport, or an ASGI
HTTP consumer): every resolver that touches the database must leave the event loop for it
(STACK.md trap 5), or it raises SynchronousOnlyOperation."""

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import RequestFactory
from strawberry.django.context import StrawberryDjangoContext

from schema import schema
from tests.conftest import GraphQL, Persona
from tests.schema_delivery.conftest import World

QUERY = """query ($log: ID!, $event: ID!) {
    destinations { id url headers signingSecret account { id name } }
    logs(first: 10) {
        totalCount
        edges { cursor node {
            id eventId receivedData status destination { id signingSecret } account { id }
            attempts { number statusCode responseHeaders }
        } }
        pageInfo { hasNextPage endCursor }
    }
    log(id: $log) { id eventId attempts { number } }
    event(id: $event) { id eventId payload logs { id destination { url } } }
}"""


def _execute_async(persona: Persona, variables: dict[str, Any]) -> dict[str, Any]:
    request = RequestFactory().post("/graphql/")
    request.user = persona.user  # type: ignore[assignment]
    context = StrawberryDjangoContext(request=request, response=None)  # type: ignore[arg-type]
    # async_to_sync runs the coroutine on another thread's loop; the ORM calls that
    # strawberry-django moves off the loop come back to this thread (thread_sensitive), so
    # they see this test's transaction.
    result = async_to_sync(schema.execute)(QUERY, variable_values=variables, context_value=context)
    assert result.errors is None, result.errors
    assert result.data is not None
    return result.data


@pytest.mark.parametrize("persona", ["admin", "normal_user"])
def test_delivery_queries_resolve_the_same_under_async_execution(
    gql: GraphQL, personas: dict[str, Persona], world: World, persona: str
) -> None:
    variables = {"log": str(world.logs["a"].pk), "event": "order-1"}

    async_data = _execute_async(personas[persona], variables)
    sync_body = gql(QUERY, variables, persona=personas[persona])

    assert async_data == sync_body["data"]
    assert async_data["logs"]["totalCount"] == 6
    secrets = {d["signingSecret"] for d in async_data["destinations"]}
    assert (secrets == {None}) is (persona == "normal_user")

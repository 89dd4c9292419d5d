"""Ids from outside are canonicalised once, at the edge: destinationCreate takes the account id
in any spelling a UUID has, and drops exactly the cache entry the fan-out reads (the account's
active destination ids) — so the next event goes to the new destination at once, not after
HOT_PATH_CACHE_SECONDS."""

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from django.core.cache import cache

from delivery import selectors
from delivery.models import DeliveryLog, Destination
from identity.models import Account
from tests.conftest import GraphQL, Persona
from tests.delivery.conftest import Poster

Capture = Callable[..., AbstractContextManager[list[Callable[[], Any]]]]

CREATE = """mutation ($input: DestinationCreateInput!) { destinationCreate(input: $input) {
  __typename ... on Destination { id account { id } } } }"""

SPELLINGS: dict[str, Callable[[Account], str]] = {
    "upper": lambda a: str(a.pk).upper(),
    "no-hyphens": lambda a: a.pk.hex,
    "braces": lambda a: "{" + str(a.pk) + "}",
    "urn": lambda a: f"urn:uuid:{a.pk}",
    "braced-upper-hex": lambda a: "{" + a.pk.hex.upper() + "}",
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_destination_created_with_any_uuid_spelling_gets_the_next_event(
    gql: GraphQL,
    admin: Persona,
    account: Account,
    app_secret: str,
    post_incoming: Poster,
    django_capture_on_commit_callbacks: Capture,
    spelling: str,
) -> None:
    def deliveries(event_id: str) -> int:
        response = post_incoming(json.dumps({"n": 1}), token=app_secret, event_id=event_id)
        assert response.status_code == 202, response.content
        count: int = response.json()["deliveries"]
        return count

    assert deliveries("before") == 0
    assert selectors.active_destination_ids(account.pk) == []  # cached, as a wake reads it
    assert cache.get(selectors.destinations_cache_key(account.pk)) == []

    with django_capture_on_commit_callbacks(execute=True):
        body = gql(
            CREATE,
            {
                "input": {
                    "accountId": SPELLINGS[spelling](account),
                    "url": "http://127.0.0.1:9/x",
                    "httpMethod": "POST",
                }
            },
            persona=admin,
        )

    created = Destination.objects.get()
    assert body == {
        "data": {
            "destinationCreate": {
                "__typename": "Destination",
                "id": str(created.pk),
                "account": {"id": str(account.pk)},
            }
        }
    }
    assert cache.get(selectors.destinations_cache_key(account.pk)) is None
    assert deliveries("after") == 1
    assert list(DeliveryLog.objects.values_list("event__event_id", "destination")) == [
        ("after", created.pk)
    ]

"""A delete that loses a deadlock is retried once; if it loses again the mutation answers a
retryable `unavailable` instead of "Unexpected error." (the real race is in
tests/faults/test_delete_under_load.py)."""

from typing import Any

import pytest
from django.db import OperationalError

from delivery import destinations
from delivery.models import Destination
from identity import services as identity_services
from identity.models import Account
from tests.conftest import GraphQL, Persona
from tests.delivery.conftest import sink_destination
from tests.sink import Sink

pytestmark = pytest.mark.django_db(transaction=True)  # retries happen outside a transaction

DESTINATION_DELETE = """mutation ($id: ID!) { destinationDelete(id: $id) {
    __typename ... on OperationInfo { messages { code message } } } }"""
ACCOUNT_DELETE = """mutation ($id: ID!) { accountDelete(id: $id) {
    __typename ... on OperationInfo { messages { code message } } } }"""
BUSY = {"code": "unavailable", "message": "Busy with concurrent changes; retry."}


class DeadlockDetected(Exception):
    sqlstate = "40P01"


def losing(times: int, real: Any) -> Any:
    """`real`, failing with a PostgreSQL deadlock its first `times` calls."""
    calls = {"n": 0}

    def call(**kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= times:
            raise OperationalError("deadlock detected") from DeadlockDetected()
        return real(**kwargs)

    return call


@pytest.mark.parametrize(("losses", "deleted"), [(1, True), (2, False)])
def test_destination_delete_retries_a_lost_deadlock_once(
    gql: GraphQL,
    admin: Persona,
    account: Account,
    sink: Sink,
    monkeypatch: pytest.MonkeyPatch,
    losses: int,
    deleted: bool,
) -> None:
    destination = sink_destination(account, sink)
    monkeypatch.setattr(
        destinations, "_destination_delete", losing(losses, destinations._destination_delete)
    )
    body = gql(DESTINATION_DELETE, {"id": str(destination.pk)}, persona=admin)
    payload = body["data"]["destinationDelete"]
    if deleted:
        assert payload == {"__typename": "Deleted"}
    else:
        assert payload == {"__typename": "OperationInfo", "messages": [BUSY]}
    assert Destination.objects.filter(pk=destination.pk).exists() is not deleted


@pytest.mark.parametrize(("losses", "deleted"), [(1, True), (2, False)])
def test_account_delete_retries_a_lost_deadlock_once(
    gql: GraphQL,
    admin: Persona,
    account: Account,
    monkeypatch: pytest.MonkeyPatch,
    losses: int,
    deleted: bool,
) -> None:
    monkeypatch.setattr(
        identity_services, "_account_delete", losing(losses, identity_services._account_delete)
    )
    body = gql(ACCOUNT_DELETE, {"id": str(account.pk)}, persona=admin)
    payload = body["data"]["accountDelete"]
    if deleted:
        assert payload == {"__typename": "Deleted"}
    else:
        assert payload == {"__typename": "OperationInfo", "messages": [BUSY]}
    assert Account.objects.filter(pk=account.pk).exists() is not deleted

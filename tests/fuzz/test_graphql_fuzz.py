"""Fuzzing the GraphQL API with schemathesis (GraphQL mode, queries generated from the schema by
hypothesis-graphql) through the real WSGI application, authenticated as an ADMIN.

Ids are drawn partly from the objects of a fixed world (so resolvers and mutations run on real
rows: updates, deletes, retries, cascades), partly at random. Each example runs in a savepoint
that is rolled back, so every example starts from the same world.

Whatever the query: never a 5xx, never an unexpected (masked) error, and no message that shows
a traceback or an exception class; every execution error and every OperationInfo message
carries one of the documented codes."""

import builtins
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import graphql
import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from django.test import Client
from django.utils import timezone
from hypothesis import settings
from hypothesis import strategies as st
from schemathesis.graphql import nodes

from delivery.errors import DeliveryErrorCode
from delivery.models import DeliveryAttempt, DeliveryLog, Destination, Event, LogStatus
from delivery.transport import new_signing_secret
from identity.auth import token_issue
from identity.errors import ErrorCode
from identity.models import Account, Membership, Role, User
from project.wsgi import application
from schema import schema as app_schema
from tests.factories import PASSWORD

ACME = uuid.UUID("00000000-0000-4000-8000-00000000ac4e")
OTHER = uuid.UUID("00000000-0000-4000-8000-0000000000e4")
EVENT_ID = "evt-fuzz"
# Primary keys of the world's users, memberships, destinations, events and logs.
KNOWN_IDS = [str(ACME), str(OTHER), EVENT_ID, *(str(pk) for pk in range(9000, 9004))]

# Per operation: about 350 requests in all, a few seconds; HYPOTHESIS_PROFILE=deep for a hunt.
MAX_EXAMPLES = 200 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 12
CODES = {code.value for code in ErrorCode} | {code.value for code in DeliveryErrorCode}
_EXCEPTIONS = sorted(
    {
        name
        for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    | {
        "IntegrityError",
        "DataError",
        "OperationalError",
        "ProgrammingError",
        "DatabaseError",
        "InterfaceError",
        "DoesNotExist",
        "MultipleObjectsReturned",
        "ObjectDoesNotExist",
        "SynchronousOnlyOperation",
        "FieldError",
        "FieldDoesNotExist",
        "ImproperlyConfigured",
        "SuspiciousOperation",
    }
)
INTERNAL = re.compile(r"Traceback|File \"|\b(?:" + "|".join(_EXCEPTIONS) + r")\b")

# --- Strategies for the scalars -----------------------------------------------------------------


def _id_node(value: int | str) -> graphql.ValueNode:
    return nodes.Int(value) if isinstance(value, int) else nodes.String(value)


ids = st.one_of(
    st.sampled_from(KNOWN_IDS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=40),
).map(_id_node)


def _json_object(fields: dict[str, graphql.ValueNode]) -> graphql.ValueNode:
    return nodes.Object(
        [
            graphql.ObjectFieldNode(name=graphql.NameNode(value=name), value=value)
            for name, value in fields.items()
        ]
    )


json_values = st.recursive(
    st.one_of(
        st.just(nodes.Null),
        st.booleans().map(nodes.Boolean),
        st.integers().map(nodes.Int),
        st.text(max_size=20).map(nodes.String),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(nodes.List),
        st.dictionaries(st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_-]{0,12}\Z"), inner, max_size=4).map(
            _json_object
        ),
    ),
    max_leaves=8,
)
schemathesis.graphql.scalar("ID", ids)
schemathesis.graphql.scalar("JSON", json_values)

gql_schema = schemathesis.graphql.from_dict({"__schema": app_schema.introspect()["__schema"]})
gql_schema.app = application
gql_schema.location = "/graphql/"


# --- The world ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _keep_the_test_connection() -> Iterator[None]:
    """Call the WSGI application the way Django's test client does: without closing the
    database connection (and with it the test's transaction) at the end of each request."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def admin_token(db: None) -> str:
    """Acme with its ADMIN (user 9000), a NORMAL_USER (9001), a destination, an event, a failed
    log with an attempt, a pending invitation; Other with its own admin (9002), destination and
    log; a second account of the admin with a member (9003) the admin may add to Acme."""
    admin, normal, outsider, friend = (
        User.objects.create_user(email, PASSWORD, id=pk)
        for pk, email in [
            (9000, "admin@example.com"),
            (9001, "normal@example.com"),
            (9002, "outsider@example.com"),
            (9003, "friend@example.com"),
        ]
    )
    acme = Account.objects.create(id=ACME, name="Acme", secret_hash="a" * 64, secret_prefix="")
    other = Account.objects.create(id=OTHER, name="Other", secret_hash="b" * 64, secret_prefix="")
    second = Account.objects.create(name="Second", secret_hash="c" * 64, secret_prefix="")
    for pk, member, account, role in [
        (9000, admin, acme, Role.ADMIN),
        (9001, normal, acme, Role.NORMAL_USER),
        (9002, outsider, other, Role.ADMIN),
        (9003, friend, second, Role.NORMAL_USER),
    ]:
        Membership.objects.create(id=pk, user=member, account=account, role=role)
    Membership.objects.create(user=admin, account=second, role=Role.ADMIN)
    acme.invitations.create(email="invited@example.com", role=Role.NORMAL_USER)
    now = timezone.now()
    for pk, account in [(9000, acme), (9001, other)]:
        destination = Destination.objects.create(
            id=pk,
            account=account,
            url="http://127.0.0.1:9/hook",
            http_method="POST",
            headers={"X-Key": "1"},
            signing_secret=new_signing_secret(),
        )
        event = Event.objects.create(
            id=pk,
            account=account,
            event_id=EVENT_ID,
            payload={"a": [1, "b"]},
            size=12,
            received_at=now,
        )
        log = DeliveryLog.objects.create(
            id=pk,
            event=event,
            destination=destination,
            account=account,
            status=LogStatus.FAILED,
            attempt_count=1,
            last_status_code=500,
            received_timestamp=now,
            processed_timestamp=now,
        )
        DeliveryAttempt.objects.create(
            log=log, number=1, started_at=now, duration_ms=5, status_code=500
        )
    return token_issue(user=admin)


# --- The checks -------------------------------------------------------------------------------


def _operation_messages(value: Any) -> Iterator[dict[str, Any]]:
    """Every OperationInfo message anywhere in `data`."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "messages" and isinstance(item, list):
                yield from (m for m in item if isinstance(m, dict))
            else:
                yield from _operation_messages(item)
    elif isinstance(value, list):
        for item in value:
            yield from _operation_messages(item)


def assert_no_internals(message: str, query: str) -> None:
    """No traceback and no exception class in a message, unless the query itself said it
    (GraphQL validation errors quote the offending input)."""
    leaks = [m.group(0) for m in INTERNAL.finditer(message) if m.group(0) not in query]
    assert not leaks, f"internal detail {leaks} in {message!r}"


def check(status: int, body: Any, query: str) -> None:
    assert status < 500, body
    assert isinstance(body, dict), body
    assert set(body) <= {"data", "errors", "extensions"}, body
    for error in body.get("errors") or []:
        assert error["message"] != "Unexpected error.", f"an unexpected error for {query}"
        assert_no_internals(error["message"], query)
        if "path" in error:  # raised while executing: one of ours, with its code
            assert error.get("extensions", {}).get("code") in CODES, error
    for message in _operation_messages(body.get("data")):  # with the fields the query selected
        if "code" in message:
            assert message["code"] in CODES, message
        assert_no_internals(str(message.get("message", "")), query)


@gql_schema.parametrize()
@settings(max_examples=MAX_EXAMPLES)
def test_admin_queries_and_mutations_never_fail_unexpectedly(case: Any, admin_token: str) -> None:
    with transaction.atomic():
        response = case.call(headers={"Authorization": f"Bearer {admin_token}"})
        transaction.set_rollback(True)
    check(response.status_code, response.json(), case.body)


# --- What the fuzzing found: NUL in any text input was an unexpected error on PostgreSQL ------


NUL_REFUSED = {
    "data": None,
    "errors": [
        {"message": "Text must not contain NUL characters.", "extensions": {"code": "invalid"}}
    ],
}


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        pytest.param(
            'mutation { login(input: {email: "a\\u0000@example.com", password: "x"}) '
            "{ __typename } }",
            {},
            id="literal",
        ),
        pytest.param(
            "mutation ($input: SignupInput!) { signup(input: $input) { __typename } }",
            {"input": {"email": "new@example.com", "password": PASSWORD, "accountName": "A\x00"}},
            id="variable",
        ),
        pytest.param(
            "query ($id: ID!) { event(id: $id) { id } }", {"id": EVENT_ID + "\x00"}, id="id"
        ),
        pytest.param(
            "mutation ($id: ID!, $input: DestinationUpdateInput!) { "
            "destinationUpdate(id: $id, input: $input) { __typename } }",
            {"id": "9000", "input": {"headers": {"X-Key": "\x00"}}},
            id="inside-json",
        ),
    ],
)
def test_nul_in_any_text_input_is_refused_before_anything_runs(
    admin_token: str, query: str, variables: dict[str, Any]
) -> None:
    before = (User.objects.count(), list(Destination.objects.values_list("headers", flat=True)))
    response = Client().post(
        "/graphql/",
        {"query": query, "variables": variables},
        content_type="application/json",
        headers={"Authorization": f"Bearer {admin_token}"},
    )

    body = response.json()
    for error in body["errors"]:
        error.pop("locations", None)
    assert (response.status_code, body) == (200, NUL_REFUSED)
    assert (User.objects.count(), list(Destination.objects.values_list("headers", flat=True))) == (
        before
    )

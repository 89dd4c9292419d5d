"""`logs`, `log(id)` and `event(id)`: every persona, every filter, keyset pagination, the page
size cap and the query count.

Acme (admin is ADMIN, normal_user NORMAL_USER) holds logs a..f, "Other" (the outsider's) log g;
see `World` in conftest.py.
"""

import base64
import json
from typing import Any

import pytest

from delivery.models import DeliveryLog, Event
from identity.models import Account
from tests.conftest import GraphQL, Persona, error_codes
from tests.factories import add_member, make_attempt, make_destination, make_event, make_log
from tests.schema_delivery.conftest import World, at

PERSONAS = ["admin", "normal_user", "outsider", "anonymous"]

LOGS = """query ($filters: LogFilter, $order: LogOrder, $first: Int! = 50, $after: String) {
    logs(filters: $filters, order: $order, first: $first, after: $after) {
        totalCount
        edges { cursor node { id } }
        pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    } }"""
LOG_FIELDS = """id eventId account { id name } destination { id url }
    receivedTimestamp processedTimestamp receivedData status attemptCount nextAttemptAt
    lastStatusCode lastError
    attempts { number startedAt durationMs statusCode responseHeaders responseBody errorClass
               errorMessage }"""
LOG = f"query ($id: ID!) {{ log(id: $id) {{ {LOG_FIELDS} }} }}"
EVENT = """query ($id: ID!) { event(id: $id) {
    id eventId receivedAt size payload logs { id status destination { id } } } }"""


def _node_ids(body: dict[str, Any]) -> list[str]:
    assert "errors" not in body, body
    return [edge["node"]["id"] for edge in body["data"]["logs"]["edges"]]


def _log(log: DeliveryLog) -> dict[str, Any]:
    log = DeliveryLog.objects.select_related("event", "account", "destination").get(pk=log.pk)
    return {
        "id": str(log.pk),
        "eventId": log.event.event_id,
        "account": {"id": str(log.account.pk), "name": log.account.name},
        "destination": (
            None
            if log.destination is None
            else {"id": str(log.destination.pk), "url": log.destination.url}
        ),
        "receivedTimestamp": log.received_timestamp.isoformat(),
        "processedTimestamp": log.processed_timestamp and log.processed_timestamp.isoformat(),
        "receivedData": log.event.payload,
        "status": log.status.upper(),
        "attemptCount": log.attempt_count,
        "nextAttemptAt": log.next_attempt_at and log.next_attempt_at.isoformat(),
        "lastStatusCode": log.last_status_code,
        "lastError": log.last_error,
        "attempts": [
            {
                "number": a.number,
                "startedAt": a.started_at.isoformat(),
                "durationMs": a.duration_ms,
                "statusCode": a.status_code,
                "responseHeaders": a.response_headers,
                "responseBody": a.response_body,
                "errorClass": a.error_class,
                "errorMessage": a.error_message,
            }
            for a in log.attempts.order_by("number")
        ],
    }


def assert_unauthenticated(body: dict[str, Any], data: dict[str, Any] | None) -> None:
    assert body["data"] == data
    assert error_codes(body) == ["unauthenticated"]
    assert [error["message"] for error in body["errors"]] == ["Authentication required."]


# --- Role matrices ---------------------------------------------------------------------------


@pytest.mark.parametrize("persona", PERSONAS)
def test_logs_role_matrix(
    gql: GraphQL, personas: dict[str, Persona], world: World, persona: str
) -> None:
    # Newest first, ties (same event) by id, newest first.
    expected = {"admin": "fedcba", "normal_user": "fedcba", "outsider": "g"}

    body = gql(LOGS, persona=personas[persona])

    if persona == "anonymous":
        assert_unauthenticated(body, None)
        return
    logs = body["data"]["logs"]
    assert _node_ids(body) == world.ids(expected[persona])
    assert logs["totalCount"] == len(expected[persona])
    assert logs["pageInfo"] == {
        "hasNextPage": False,
        "hasPreviousPage": False,
        "startCursor": logs["edges"][0]["cursor"],
        "endCursor": logs["edges"][-1]["cursor"],
    }


@pytest.mark.parametrize("persona", PERSONAS)
def test_log_role_matrix(
    gql: GraphQL, personas: dict[str, Persona], world: World, persona: str
) -> None:
    expected = {
        "admin": _log(world.logs["c"]),
        "normal_user": _log(world.logs["c"]),
        # A foreign log reads as missing.
        "outsider": None,
    }

    body = gql(LOG, {"id": str(world.logs["c"].pk)}, persona=personas[persona])

    if persona == "anonymous":
        assert_unauthenticated(body, {"log": None})
    else:
        assert body == {"data": {"log": expected[persona]}}


def test_log_shows_exact_fields(gql: GraphQL, admin: Persona, world: World) -> None:
    body = gql(LOG, {"id": str(world.logs["c"].pk)}, persona=admin)

    assert body == {
        "data": {
            "log": {
                "id": str(world.logs["c"].pk),
                "eventId": "order-2",
                "account": {"id": str(world.one.account_id), "name": "Acme"},
                "destination": {"id": str(world.one.pk), "url": "http://127.0.0.1:9/one"},
                "receivedTimestamp": "2025-01-01T12:10:00+00:00",
                "processedTimestamp": "2025-01-01T12:11:00+00:00",
                "receivedData": {"order": 2},
                "status": "RETRYING",
                "attemptCount": 1,
                "nextAttemptAt": "2025-01-01T12:12:00+00:00",
                "lastStatusCode": 503,
                "lastError": "",
                "attempts": [
                    {
                        "number": 1,
                        "startedAt": "2025-01-01T12:11:00+00:00",
                        "durationMs": 80,
                        "statusCode": 503,
                        "responseHeaders": {},
                        "responseBody": "busy",
                        "errorClass": "HTTPError",
                        "errorMessage": "503 Service Unavailable",
                    }
                ],
            }
        }
    }


def test_log_of_deleted_destination_has_null_destination(
    gql: GraphQL, admin: Persona, world: World
) -> None:
    body = gql(LOG, {"id": str(world.logs["f"].pk)}, persona=admin)

    assert body["data"]["log"]["destination"] is None
    assert body["data"]["log"]["status"] == "FAILED"
    assert body["data"]["log"]["lastError"] == "Destination deleted."


@pytest.mark.parametrize("missing_id", ["999999", "abc", "²", "99999999999999999999999"])
def test_log_with_missing_or_malformed_id_is_null(
    gql: GraphQL, admin: Persona, world: World, missing_id: str
) -> None:
    assert gql(LOG, {"id": missing_id}, persona=admin) == {"data": {"log": None}}


def _event(event: Event, log_names: str, world: World) -> dict[str, Any]:
    return {
        "id": str(event.pk),
        "eventId": event.event_id,
        "receivedAt": event.received_at.isoformat(),
        "size": event.size,
        "payload": event.payload,
        "logs": [
            {
                "id": str(world.logs[name].pk),
                "status": world.logs[name].status.upper(),
                "destination": (
                    None
                    if world.logs[name].destination_id is None
                    else {"id": str(world.logs[name].destination_id)}
                ),
            }
            for name in log_names
        ],
    }


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("by", ["pk", "event_id"])
def test_event_role_matrix(
    gql: GraphQL, personas: dict[str, Persona], world: World, persona: str, by: str
) -> None:
    event = world.events["order-2"]
    expected = {
        "admin": _event(event, "cd", world),
        "normal_user": _event(event, "cd", world),
        "outsider": None,
    }

    body = gql(EVENT, {"id": str(event.pk) if by == "pk" else "order-2"}, persona=personas[persona])

    if persona == "anonymous":
        assert_unauthenticated(body, {"event": None})
    else:
        assert body == {"data": {"event": expected[persona]}}


def test_event_by_event_id_stays_within_your_accounts(
    gql: GraphQL, admin: Persona, outsider: Persona, world: World
) -> None:
    # "order-1" exists in Acme and in Other: each member finds their own.
    mine = gql(EVENT, {"id": "order-1"}, persona=admin)
    theirs = gql(EVENT, {"id": "order-1"}, persona=outsider)

    assert mine == {"data": {"event": _event(world.events["order-1"], "ab", world)}}
    assert theirs == {"data": {"event": _event(world.events["other"], "g", world)}}


def test_event_by_event_id_in_two_of_your_accounts_is_null(
    gql: GraphQL, outsider: Persona, account: Account, world: World
) -> None:

    add_member(account, outsider.user, "NORMAL_USER")  # type: ignore[arg-type]

    body = gql(EVENT, {"id": "order-1"}, persona=outsider)

    assert body == {"data": {"event": None}}


@pytest.mark.parametrize("missing_id", ["999999", "nothing", "²"])
def test_event_missing_is_null(gql: GraphQL, admin: Persona, world: World, missing_id: str) -> None:
    assert gql(EVENT, {"id": missing_id}, persona=admin) == {"data": {"event": None}}


# --- Filters ---------------------------------------------------------------------------------


def _filter_cases(world: World) -> list[tuple[dict[str, Any], str]]:
    acme = str(world.one.account_id)
    return [
        ({}, "fedcba"),
        ({"accountId": acme}, "fedcba"),
        ({"destinationId": str(world.one.pk)}, "eca"),
        ({"destinationId": str(world.two.pk)}, "db"),
        ({"status": ["FAILED"]}, "fb"),
        ({"status": ["SUCCESS", "RETRYING"]}, "ca"),
        ({"status": []}, "fedcba"),
        ({"eventId": "order-1"}, "ba"),
        ({"eventId": "order-9"}, ""),
        ({"receivedTimestamp": {"gte": at(10).isoformat()}}, "fedc"),
        ({"receivedTimestamp": {"lte": at(10).isoformat()}}, "dcba"),
        ({"receivedTimestamp": {"gte": at(5).isoformat(), "lte": at(15).isoformat()}}, "dc"),
        ({"processedTimestamp": {"gte": at(2).isoformat()}}, "fcb"),
        ({"processedTimestamp": {"lte": at(1).isoformat()}}, "a"),
        ({"statusCode": 500}, "b"),
        ({"statusCode": 404}, ""),
        ({"destinationId": str(world.one.pk), "status": ["SENDING", "SUCCESS"]}, "ea"),
        ({"accountId": acme, "eventId": "order-3", "status": ["FAILED"]}, "f"),
    ]


def test_logs_each_filter_narrows(gql: GraphQL, normal_user: Persona, world: World) -> None:
    for filters, names in _filter_cases(world):
        body = gql(LOGS, {"filters": filters}, persona=normal_user)

        assert _node_ids(body) == world.ids(names), filters
        assert body["data"]["logs"]["totalCount"] == len(names), filters


@pytest.mark.parametrize(
    "filters",
    [
        {"accountId": "foreign"},
        {"accountId": "00000000-0000-0000-0000-000000000000"},
        {"accountId": "not-a-uuid"},
        {"destinationId": "foreign"},
        {"destinationId": "abc"},
        {"destinationId": "²"},
        {"eventId": "order-1", "accountId": "foreign"},
    ],
)
def test_logs_filter_on_foreign_ids_returns_nothing(
    gql: GraphQL, admin: Persona, other_account: Account, world: World, filters: dict[str, Any]
) -> None:
    foreign = {"accountId": str(other_account.pk), "destinationId": str(world.other.pk)}
    filters = {key: foreign[key] if value == "foreign" else value for key, value in filters.items()}

    body = gql(LOGS, {"filters": filters}, persona=admin)

    assert body["data"]["logs"] == {
        "totalCount": 0,
        "edges": [],
        "pageInfo": {
            "hasNextPage": False,
            "hasPreviousPage": False,
            "startCursor": None,
            "endCursor": None,
        },
    }


# --- Ordering and pagination -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "names"),
    [
        (None, "fedcba"),
        ({"receivedTimestamp": "DESC"}, "fedcba"),
        ({"receivedTimestamp": "ASC"}, "abcdef"),
        # Not processed yet (d, e) come last in both directions, by id.
        ({"processedTimestamp": "DESC"}, "fcbaed"),
        ({"processedTimestamp": "ASC"}, "abcfde"),
    ],
)
def test_logs_order(
    gql: GraphQL, admin: Persona, world: World, order: dict[str, str] | None, names: str
) -> None:
    body = gql(LOGS, {"order": order}, persona=admin)

    assert _node_ids(body) == world.ids(names)


def test_logs_order_takes_one_field(gql: GraphQL, admin: Persona, world: World) -> None:
    body = gql(
        LOGS, {"order": {"receivedTimestamp": "ASC", "processedTimestamp": "ASC"}}, persona=admin
    )

    assert body["data"] is None
    assert "exactly one key" in body["errors"][0]["message"]


@pytest.fixture
def many_logs(account: Account) -> list[DeliveryLog]:
    """23 logs: received in groups of three sharing a timestamp; every fourth not processed,
    processed ones sharing timestamps in pairs."""
    destination = make_destination(account)
    logs = []
    for i in range(23):
        event = make_event(account, received_at=at(i // 3))
        processed = None if i % 4 == 0 else at(100 + i // 2)
        logs.append(make_log(event, destination, "success", processed_timestamp=processed))
    return logs


def _walk(
    gql: GraphQL, persona: Persona, order: dict[str, str] | None, first: int
) -> tuple[list[str], list[dict[str, Any]]]:
    seen: list[str] = []
    pages = []
    after = None
    for _ in range(100):
        body = gql(LOGS, {"order": order, "first": first, "after": after}, persona=persona)
        assert "errors" not in body, body
        page = body["data"]["logs"]
        pages.append(page)
        seen += _node_ids(body)
        if not page["pageInfo"]["hasNextPage"]:
            return seen, pages
        after = page["pageInfo"]["endCursor"]
    raise AssertionError("pagination did not end")


def _expected_order(logs: list[DeliveryLog], field: str, desc: bool) -> list[str]:
    # Nulls last in both directions; ties by id in the same direction.
    def key(log: DeliveryLog) -> tuple[Any, ...]:
        value = getattr(log, field)
        stamp = value.timestamp() if value is not None else 0.0
        sign = -1 if desc else 1
        return (value is None, sign * stamp, sign * log.pk)

    return [str(log.pk) for log in sorted(logs, key=key)]


@pytest.mark.parametrize(
    "order",
    [
        None,
        {"receivedTimestamp": "ASC"},
        {"processedTimestamp": "DESC"},
        {"processedTimestamp": "ASC"},
    ],
)
@pytest.mark.parametrize("first", [1, 5, 7])
def test_pagination_walks_all_rows_without_gaps_or_duplicates(
    gql: GraphQL,
    normal_user: Persona,
    many_logs: list[DeliveryLog],
    order: dict[str, str] | None,
    first: int,
) -> None:
    field, direction = next(iter((order or {"receivedTimestamp": "DESC"}).items()))
    model_field = {"receivedTimestamp": "received_timestamp"}.get(field, "processed_timestamp")

    seen, pages = _walk(gql, normal_user, order, first)

    assert seen == _expected_order(many_logs, model_field, direction == "DESC")
    assert len(pages) == -(-23 // first)
    assert {page["totalCount"] for page in pages} == {23}
    assert [len(page["edges"]) for page in pages[:-1]] == [first] * (len(pages) - 1)
    assert [page["pageInfo"]["hasPreviousPage"] for page in pages] == [False] + [True] * (
        len(pages) - 1
    )


def test_pagination_is_stable_while_logs_arrive(
    gql: GraphQL, admin: Persona, account: Account, many_logs: list[DeliveryLog]
) -> None:
    first_page = gql(LOGS, {"first": 10}, persona=admin)
    # Newer than everything: it sorts before the cursor, so the walk neither repeats nor skips.
    make_log(make_event(account, received_at=at(60)), None, "queued")

    rest = gql(
        LOGS,
        {"first": 100, "after": first_page["data"]["logs"]["pageInfo"]["endCursor"]},
        persona=admin,
    )

    assert _node_ids(first_page) + _node_ids(rest) == _expected_order(
        many_logs, "received_timestamp", True
    )
    assert rest["data"]["logs"]["totalCount"] == 24


def test_first_zero_counts_without_rows(
    gql: GraphQL, admin: Persona, many_logs: list[DeliveryLog]
) -> None:
    body = gql(LOGS, {"first": 0}, persona=admin)

    assert body["data"]["logs"] == {
        "totalCount": 23,
        "edges": [],
        "pageInfo": {
            "hasNextPage": True,
            "hasPreviousPage": False,
            "startCursor": None,
            "endCursor": None,
        },
    }


def test_first_at_the_cap_is_allowed(
    gql: GraphQL, admin: Persona, many_logs: list[DeliveryLog]
) -> None:
    body = gql(LOGS, {"first": 100}, persona=admin)

    assert len(_node_ids(body)) == 23


@pytest.mark.parametrize("first", [101, 1000, -1])
def test_first_beyond_the_cap_is_an_invalid_filter_error(
    gql: GraphQL, admin: Persona, many_logs: list[DeliveryLog], first: int
) -> None:
    body = gql(LOGS, {"first": first}, persona=admin)

    assert body["data"] is None
    assert error_codes(body) == ["invalid_filter"]
    assert body["errors"][0]["message"] == "`first` must be between 0 and 100."


def _cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode()


@pytest.mark.parametrize(
    "after",
    [
        "garbage!",
        "",
        base64.urlsafe_b64encode(b"not json").decode(),
        _cursor("received_timestamp", True, "yesterday", 1),
        _cursor("received_timestamp", True, "2025-01-01T12:00:00", 1),  # naive
        _cursor("received_timestamp", True, "2025-01-01T12:00:00+00:00", "x"),
        _cursor("received_timestamp", True),
        _cursor(1, 2, 3, 4),
    ],
)
def test_malformed_cursor_is_an_invalid_filter_error(
    gql: GraphQL, admin: Persona, many_logs: list[DeliveryLog], after: str
) -> None:
    body = gql(LOGS, {"after": after}, persona=admin)

    assert body["data"] is None
    assert error_codes(body) == ["invalid_filter"]
    assert body["errors"][0]["message"] == "Invalid cursor."


def test_cursor_of_another_order_is_an_invalid_filter_error(
    gql: GraphQL, admin: Persona, many_logs: list[DeliveryLog]
) -> None:
    page = gql(LOGS, {"first": 2}, persona=admin)

    body = gql(
        LOGS,
        {
            "after": page["data"]["logs"]["pageInfo"]["endCursor"],
            "order": {"receivedTimestamp": "ASC"},
        },
        persona=admin,
    )

    assert body["data"] is None
    assert error_codes(body) == ["invalid_filter"]
    assert body["errors"][0]["message"] == (
        "The cursor belongs to another order; start again without `after`."
    )


def test_cursor_does_not_widen_access(
    gql: GraphQL, admin: Persona, outsider: Persona, world: World
) -> None:
    # Someone else's cursor is only a position: the outsider still sees only their own log.
    page = gql(LOGS, {"first": 1}, persona=admin)

    body = gql(
        LOGS,
        {"after": _cursor("received_timestamp", True, at(99).isoformat(), 10**30)},
        persona=outsider,
    )
    mine_after_admin_cursor = gql(
        LOGS, {"after": page["data"]["logs"]["pageInfo"]["endCursor"]}, persona=outsider
    )

    assert _node_ids(body) == world.ids("g")
    assert _node_ids(mine_after_admin_cursor) == world.ids("g")


# --- Query counts ----------------------------------------------------------------------------

COUNTED = """{ logs(first: 100) { totalCount edges { node { id eventId status
    destination { id url } account { id name } attempts { number statusCode } } } } }"""


def _add_logs(account: Account, n: int) -> None:
    destination = make_destination(account)
    for i in range(n):
        log = make_log(make_event(account), destination if i % 2 else None, "failed")
        make_attempt(log, 1, status_code=500)
        make_attempt(log, 2, status_code=502)


def test_logs_query_count_does_not_grow_with_rows(
    gql: GraphQL, admin: Persona, account: Account, django_assert_num_queries: Any
) -> None:
    _add_logs(account, 5)
    gql(COUNTED, persona=admin)  # warms the token's last_used_at

    # token; count; logs joined with event, destination, account; attempts
    with django_assert_num_queries(4):
        small = gql(COUNTED, persona=admin)
    _add_logs(account, 95)
    with django_assert_num_queries(4):
        large = gql(COUNTED, persona=admin)

    assert small["data"]["logs"]["totalCount"] == 5
    assert large["data"]["logs"]["totalCount"] == 100
    assert len(large["data"]["logs"]["edges"]) == 100
    assert {len(e["node"]["attempts"]) for e in large["data"]["logs"]["edges"]} == {2}


def test_event_logs_query_count_does_not_grow_with_rows(
    gql: GraphQL, admin: Persona, account: Account, django_assert_num_queries: Any
) -> None:
    query = """query ($id: ID!) { event(id: $id) { eventId logs { id destination { url }
        attempts { number } } } }"""
    event = make_event(account, "bulk")
    for _ in range(3):
        make_attempt(make_log(event, make_destination(account)), 1)
    gql(query, {"id": "bulk"}, persona=admin)

    with django_assert_num_queries(4):  # token; event; logs + destinations; attempts
        small = gql(query, {"id": "bulk"}, persona=admin)
    for _ in range(30):
        make_attempt(make_log(event, make_destination(account)), 1)
    with django_assert_num_queries(4):
        large = gql(query, {"id": "bulk"}, persona=admin)

    assert len(small["data"]["event"]["logs"]) == 3
    assert len(large["data"]["event"]["logs"]) == 33


def test_logs_without_total_count_skip_the_count_query(
    gql: GraphQL, admin: Persona, account: Account, django_assert_num_queries: Any
) -> None:
    _add_logs(account, 3)
    gql("{ logs { edges { node { id } } } }", persona=admin)

    with django_assert_num_queries(2):  # token; logs
        body = gql("{ logs { edges { node { id } } } }", persona=admin)

    assert len(_node_ids(body)) == 3

"""Queries and mutations for destinations, delivery logs and events. Each resolver finds the
actor, calls one service or selector and shapes the result."""

import base64
import binascii
import json
from datetime import datetime
from enum import Enum
from typing import Any

import strawberry
import strawberry_django
from django.db.models import F, OrderBy, Q, QuerySet
from strawberry.relay import PageInfo
from strawberry.scalars import JSON
from strawberry.types import Info
from strawberry.types.nodes import SelectedField
from strawberry_django.optimizer import optimize

from delivery import destinations, models, outbox, selectors, tasks
from delivery.errors import DeliveryErrorCode
from identity.errors import invalid
from schema import context
from schema.context import given
from schema.delivery_types import (
    DeliveryLog,
    Destination,
    DestinationFilter,
    Event,
    HttpMethod,
    LogConnection,
    LogEdge,
    LogFilter,
    LogsRetryResult,
    Notice,
    destination_filters,
    destination_health,
    log_filters,
    prefetch_health,
)
from schema.types import Deleted

MAX_PAGE_SIZE = 100


@strawberry.input
class DestinationCreateInput:
    account_id: strawberry.ID
    url: str = strawberry.field(description="http(s) URL, at most 2000 characters.")
    http_method: HttpMethod  # type: ignore[valid-type]
    headers: JSON | None = strawberry.field(
        default=None,
        description="Extra request headers: an object of header name to string value (at most "
        "50; not Content-Type, User-Agent, webhook-* or hop-by-hop headers). Values: visible "
        "ASCII, spaces or tabs only between characters, at most 4096 characters.",
    )
    is_active: bool = True
    max_in_flight: int = strawberry.field(
        default=0,
        description="Concurrent requests to this destination, 1 to 100; 0: the server's "
        "default (DELIVERY_MAX_IN_FLIGHT). Above 1, deliveries may arrive out of order.",
    )
    rate_limit: int = strawberry.field(
        default=0,
        description="Requests per second to this destination, 1 to 10000, shared by every "
        "worker; 0: the server's default (DELIVERY_RATE_LIMIT, none unless configured).",
    )


@strawberry.input(description="Fields left out (or null) stay as they are.")
class DestinationUpdateInput:
    url: str | None = strawberry.UNSET
    http_method: HttpMethod | None = strawberry.UNSET  # type: ignore[valid-type]
    headers: JSON | None = strawberry.field(
        default=strawberry.UNSET, description="Replaces all extra headers (see create)."
    )
    is_active: bool | None = strawberry.UNSET
    max_in_flight: int | None = strawberry.field(
        default=strawberry.UNSET, description="1 to 100; 0: back to the server's default."
    )
    rate_limit: int | None = strawberry.field(
        default=strawberry.UNSET, description="1 to 10000; 0: back to the server's default."
    )


@strawberry.enum(description="Sort direction.")
class OrderDirection(Enum):
    ASC = "ASC"
    DESC = "DESC"


@strawberry.input(
    one_of=True,
    description="Order logs by one timestamp (ties broken by id in the same direction). Logs "
    "not processed yet have no processedTimestamp and come last in either direction.",
)
class LogOrder:
    received_timestamp: OrderDirection | None = strawberry.UNSET
    processed_timestamp: OrderDirection | None = strawberry.UNSET


# --- Keyset pagination -----------------------------------------------------------------------


def _selects(info: Info, name: str) -> bool:
    """Whether the field's own selection (through fragments) includes `name`."""

    def walk(selections: list[Any]) -> bool:
        return any(
            selection.name == name
            if isinstance(selection, SelectedField)
            else walk(selection.selections)
            for selection in selections
        )

    return any(walk(field.selections) for field in info.selected_fields)


def _bad_page(message: str) -> Exception:
    return invalid(DeliveryErrorCode.INVALID_FILTER, message)


def _order(order: LogOrder | None) -> tuple[str, bool]:
    """The model field to order by and whether descending (default: received, newest first)."""
    if order is not None and order.processed_timestamp:
        return "processed_timestamp", order.processed_timestamp is OrderDirection.DESC
    if order is not None and order.received_timestamp:
        return "received_timestamp", order.received_timestamp is OrderDirection.DESC
    return "received_timestamp", True


def _encode_cursor(field: str, desc: bool, value: datetime | None, pk: int) -> str:
    raw = json.dumps([field, desc, value.isoformat() if value is not None else None, pk])
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_cursor(cursor: str, field: str, desc: bool) -> tuple[datetime | None, int]:
    try:
        cfield, cdesc, value, pk = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        position = (None if value is None else datetime.fromisoformat(value), int(pk))
    except (binascii.Error, UnicodeError, ValueError, TypeError):
        raise _bad_page("Invalid cursor.") from None
    if position[0] is not None and position[0].tzinfo is None:
        raise _bad_page("Invalid cursor.")
    if (cfield, cdesc) != (field, desc):
        raise _bad_page("The cursor belongs to another order; start again without `after`.")
    return position


# processedTimestamp is null until a log is first processed; receivedTimestamp never is.
NULLABLE_ORDER_FIELDS = frozenset({"processed_timestamp"})


def _after(field: str, desc: bool, value: datetime | None, pk: int) -> Q:
    """Rows strictly after (value, pk) in the order `field` (nulls last), `-id` or `id`."""
    beyond, pk_beyond = ("lt", "pk__lt") if desc else ("gt", "pk__gt")
    if value is None:  # among the trailing nulls
        return Q(**{f"{field}__isnull": True, pk_beyond: pk})
    after = Q(**{f"{field}__{beyond}": value}) | Q(**{field: value, pk_beyond: pk})
    if field in NULLABLE_ORDER_FIELDS:
        after |= Q(**{f"{field}__isnull": True})
    return after


def _ordered(logs: QuerySet[models.DeliveryLog], field: str, desc: bool) -> QuerySet[Any]:
    # NULLS LAST only where nulls exist: on a NOT NULL column it would stop PostgreSQL from
    # walking the plain (account, -received_timestamp, -id) index, and sort every row instead.
    nulls_last = True if field in NULLABLE_ORDER_FIELDS else None
    key: OrderBy = (
        F(field).desc(nulls_last=nulls_last) if desc else F(field).asc(nulls_last=nulls_last)
    )
    return logs.order_by(key, "-id" if desc else "id")


@strawberry.type
class DeliveryQuery:
    @strawberry_django.field(
        description="Destinations of your accounts (any role), oldest first. Requires a token."
    )
    def destinations(
        self, info: Info, filters: DestinationFilter | None = None
    ) -> list[Destination]:
        found = selectors.destination_list(
            actor=context.user(info), filters=destination_filters(filters)
        )
        states = set(filters.health or ()) if filters is not None else set()
        if not states and not _selects(info, "health"):
            return found  # type: ignore[return-value]
        # Health lives in the cache, not in a column: read it for the whole list at once.
        listed = prefetch_health(list(optimize(found, info)))
        if states:
            listed = [d for d in listed if destination_health(d).state in states]
        return listed  # type: ignore[return-value]

    @strawberry_django.field(description="One of your destinations; null when missing or foreign.")
    def destination(self, info: Info, id: strawberry.ID) -> Destination | None:
        return selectors.destination_get(actor=context.user(info), destination_id=id)  # type: ignore[return-value]

    @strawberry_django.field(
        description="Delivery logs of your accounts (any role), newest first unless `order` "
        f"says otherwise. Cursor pagination: `first` (0 to {MAX_PAGE_SIZE}; more is an "
        "invalid_filter error, not clamped) logs after the opaque `after` cursor (an endCursor "
        "or edge cursor of the same order; a malformed one is invalid_filter). Pages are stable "
        "while rows are added."
    )
    def logs(
        self,
        info: Info,
        filters: LogFilter | None = None,
        order: LogOrder | None = None,
        first: int = 50,
        after: str | None = None,
    ) -> LogConnection:
        actor = context.user(info)
        if not 0 <= first <= MAX_PAGE_SIZE:
            raise _bad_page(f"`first` must be between 0 and {MAX_PAGE_SIZE}.")
        field, desc = _order(order)
        matching = selectors.log_list(actor=actor, filters=log_filters(filters))
        page = _ordered(matching, field, desc)
        if after is not None:
            page = page.filter(_after(field, desc, *_decode_cursor(after, field, desc)))
        # The optimizer loads only the selected columns: the cursor's value comes along as an
        # annotation rather than as one deferred load per row.
        page = optimize(page, info).annotate(_cursor_value=F(field))
        rows = list(page[: first + 1])
        has_next = len(rows) > first
        edges = [
            LogEdge(
                cursor=_encode_cursor(field, desc, log._cursor_value, log.pk),
                node=log,
            )
            for log in rows[:first]
        ]
        return LogConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=has_next,
                has_previous_page=after is not None,
                start_cursor=edges[0].cursor if edges else None,
                end_cursor=edges[-1].cursor if edges else None,
            ),
            total_count_qs=matching,
        )

    @strawberry_django.field(
        description="Operational notices of an account's destinations (breaker opened or "
        "closed, disabled, re-enabled), newest first, at most `first` (1 to 100; else "
        "invalid_filter). Any member; a foreign account has none. Requires a token."
    )
    def notices(
        self,
        info: Info,
        account_id: strawberry.ID,
        destination_id: strawberry.ID | None = None,
        first: int = 50,
    ) -> list[Notice]:
        if not 1 <= first <= 100:
            raise _bad_page("`first` must be between 1 and 100.")
        return selectors.notice_list(  # type: ignore[return-value]
            actor=context.user(info),
            account_id=str(account_id),
            destination_id=None if destination_id is None else str(destination_id),
        )[:first]

    @strawberry_django.field(
        description="One delivery log of your accounts with its attempts; null when missing or "
        "foreign."
    )
    def log(self, info: Info, id: strawberry.ID) -> DeliveryLog | None:
        return selectors.log_get(actor=context.user(info), log_id=id)  # type: ignore[return-value]

    @strawberry_django.field(
        description="One event of your accounts, by its database id or its CL-X-EVENT-ID; null "
        "when missing, foreign, or when the CL-X-EVENT-ID exists in several of your accounts."
    )
    def event(self, info: Info, id: strawberry.ID) -> Event | None:
        return selectors.event_get(actor=context.user(info), event_id=id)  # type: ignore[return-value]


@strawberry.type
class DeliveryMutation:
    @strawberry_django.mutation(
        description="Add a destination to an account, with a new signing secret. ADMIN. "
        "Codes: invalid_url, invalid_headers, invalid_max_in_flight, invalid_rate_limit, "
        "not_found (account missing "
        "or foreign), "
        "permission_denied, unauthenticated."
    )
    def destination_create(self, info: Info, input: DestinationCreateInput) -> Destination:
        return destinations.destination_create(  # type: ignore[return-value]
            actor=context.actor(info),
            account_id=str(input.account_id),
            url=input.url,
            http_method=str(input.http_method),
            headers=input.headers,  # type: ignore[arg-type]
            is_active=input.is_active,
            max_in_flight=input.max_in_flight,
            rate_limit=input.rate_limit,
        )

    @strawberry_django.mutation(
        description="Change a destination; deliveries not sent yet use the new settings. ADMIN "
        "or NORMAL_USER. Codes: invalid_url, invalid_headers, invalid_max_in_flight, "
        "invalid_rate_limit, not_found, "
        "unauthenticated."
    )
    def destination_update(
        self, info: Info, id: strawberry.ID, input: DestinationUpdateInput
    ) -> Destination:
        method = given(input.http_method)
        destination = destinations.destination_update(
            actor=context.actor(info),
            destination_id=id,
            url=given(input.url),
            http_method=None if method is None else str(method),
            headers=given(input.headers),
            is_active=given(input.is_active),
            max_in_flight=given(input.max_in_flight),
            rate_limit=given(input.rate_limit),
        )
        if given(input.is_active):
            tasks.wake_destinations([destination.pk])  # logs that waited for a re-enable
        return destination  # type: ignore[return-value]

    @strawberry_django.mutation(
        description="Delete a destination. Its logs stay, with destination null; unsent ones "
        "fail. ADMIN. Codes: not_found, permission_denied, unauthenticated."
    )
    def destination_delete(self, info: Info, id: strawberry.ID) -> Deleted:
        destinations.destination_delete(actor=context.actor(info), destination_id=id)
        return Deleted(id=id)

    @strawberry_django.mutation(
        description="Re-enable a destination, whoever or whatever disabled it: its circuit "
        "breaker closes and the deliveries that waited are sent, in order. A no-op on an "
        "active one. ADMIN. Codes: not_found, permission_denied, unauthenticated."
    )
    def destination_enable(self, info: Info, id: strawberry.ID) -> Destination:
        destination = destinations.destination_enable(actor=context.actor(info), destination_id=id)
        tasks.wake_destinations([destination.pk])
        return destination  # type: ignore[return-value]

    @strawberry_django.mutation(
        description="Replace the signing secret; the next request is signed with the new one. "
        "ADMIN. Codes: not_found, permission_denied, unauthenticated."
    )
    def destination_rotate_secret(self, info: Info, id: strawberry.ID) -> Destination:
        return destinations.destination_rotate_secret(  # type: ignore[return-value]
            actor=context.actor(info), destination_id=id
        )

    @strawberry_django.mutation(
        description="Deliver a log again now, whatever its status (also success or failed); "
        "its retry schedule starts over. ADMIN. Codes: not_retryable (being sent right now), "
        "not_found, permission_denied, unauthenticated."
    )
    def log_retry(self, info: Info, id: strawberry.ID) -> DeliveryLog:
        log = outbox.log_retry(actor=context.actor(info), log_id=id)
        tasks.wake_destinations([log.destination_id])
        return log  # type: ignore[return-value]

    @strawberry_django.mutation(
        description="Queue again every FAILED log matching `filters` in the accounts you "
        "administer (logs of accounts where you are not ADMIN are left alone and not counted; "
        "the status filter is ignored). Code: unauthenticated."
    )
    def logs_retry_failed(self, info: Info, filters: LogFilter | None = None) -> LogsRetryResult:
        logs = outbox.logs_retry_failed(actor=context.actor(info), filters=log_filters(filters))
        tasks.wake_destinations(log.destination_id for log in logs)
        return LogsRetryResult(count=len(logs))

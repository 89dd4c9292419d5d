"""GraphQL object types, enums and filter inputs of the delivery domain.

Importing this module only defines types (the subscription in schema/subscriptions.py reuses
`DeliveryLog`, `LogStatus` and `LogFilter`). Nested selections are resolved by the optimizer
with select_related/prefetch_related, so lists cost a constant number of queries.
"""

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import strawberry
import strawberry_django
from django.db.models import QuerySet
from strawberry import relay
from strawberry.scalars import JSON
from strawberry.types import Info
from strawberry_django.resolvers import django_resolver

from delivery import health, live, models, selectors
from delivery.live import recheck_interval
from identity.models import User
from identity.permissions import Action, account_ids
from schema import context
from schema.types import Account

HttpMethod = strawberry.enum(
    models.HttpMethod, name="HttpMethod", description="HTTP method of a destination's requests."
)
LogStatus = strawberry.enum(
    models.LogStatus,
    name="LogStatus",
    description="Where a delivery stands: QUEUED (waiting for a worker), SENDING (a worker "
    "holds it), RETRYING (failed transiently; next try at nextAttemptAt), SUCCESS (2xx), "
    "FAILED (permanent failure or retries used up).",
)


HealthState = strawberry.enum(
    health.State,
    name="HealthState",
    description="A destination's health: HEALTHY; DEGRADED (its latest try failed, or at least "
    f"{health.DEGRADED_PERCENT} % of the breaker window's tries did); OPEN (circuit breaker "
    "open: nothing is sent until nextAttemptAt, when a probe goes; waiting deliveries keep "
    "their retries); HALF_OPEN (a probe may go now); DISABLED (isActive false).",
)
DisabledCause = strawberry.enum(
    models.DisabledCause,
    name="DisabledCause",
    description="Why a destination is inactive: USER (a person; its waiting deliveries fail), "
    "GONE (it answered 410 Gone) or FAILING (only failures for DESTINATION_DISABLE_AFTER, or "
    "too many breaker openings in a row); GONE and FAILING keep its waiting deliveries for a "
    "re-enable.",
)
NoticeKind = strawberry.enum(
    models.NoticeKind, name="NoticeKind", description="What changed in a destination's health."
)


@strawberry.type(
    name="DestinationHealth",
    description="Kept incrementally by the workers (counters per minute, 5 minutes and hour); "
    "rates are 0 to 1, null without tries.",
)
class DestinationHealth:
    state: HealthState  # type: ignore[valid-type]
    success_rate_1h: float | None
    success_rate_24h: float | None
    attempts_1h: int
    failures_1h: int = strawberry.field(description="Tries that did not succeed (any kind).")
    latency_p50_ms: int | None = strawberry.field(
        description="Answered tries of the last hour (histogram estimate)."
    )
    latency_p95_ms: int | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error: str = strawberry.field(description="Of the latest failed try.")
    consecutive_failures: int
    in_flight: int = strawberry.field(description="Lanes sending to it now.")
    backlog: int = strawberry.field(
        description=f"Waiting deliveries (queued + retrying), counted up to {health.BACKLOG_CAP}."
    )
    next_attempt_at: datetime | None = strawberry.field(
        description="The probe time while the breaker is open; else the first waiting "
        "delivery's due time."
    )
    opened_at: datetime | None = strawberry.field(
        description="When the breaker opened (null while closed)."
    )


def destination_health(destination: models.Destination) -> health.Health:
    """The figures `Destination.health` shows: prefetched for a list (`prefetch_health`), else
    read for this destination alone."""
    found: health.Health | None = getattr(destination, "_health", None)
    if found is None:
        (found,) = health.figures([destination])
    return found


def prefetch_health(destinations: list[models.Destination]) -> list[models.Destination]:
    """Read the health of a list of destinations at once (four round trips in all)."""
    for destination, figures in zip(destinations, health.figures(destinations), strict=True):
        destination._health = figures  # type: ignore[attr-defined]
    return destinations


# --- Signing secrets: visible to the ADMINs of the destination's account only ---------------
# (header values likewise: others see this in place of each value)
HEADER_VALUE_MASK = "********"


@dataclass
class _AdminAccounts:
    # Reused within one HTTP request (its context lives for that request; the root value is
    # None for every field). A WebSocket context lives as long as the connection: there the
    # ids are reused only for the same user and for at most `recheck_interval()` seconds, so a
    # role change is seen within LIVE_RECHECK_SECONDS, by the next event after it at the latest.
    root: object
    actor: tuple[object, bool, bool]
    at: float  # time.monotonic() when computed
    ids: frozenset[str] | None  # None: every account (superuser)


def _admin_account_ids(info: Info) -> frozenset[str] | None:
    """Ids of the accounts where the caller may manage destinations (None: all of them),
    computed once per HTTP request, and at least every `recheck_interval()` on a WebSocket."""
    ctx: Any = info.context
    actor = context.actor(info)
    key = (getattr(actor, "pk", None), bool(actor.is_active), bool(actor.is_superuser))
    # HTTP contexts are objects; the WebSocket context of strawberry's consumer is a dict.
    socket = isinstance(ctx, dict)
    store: dict[str, Any] = ctx if socket else ctx.__dict__
    cached: _AdminAccounts | None = store.get("_admin_accounts")
    if cached is not None and cached.actor == key:
        if socket and time.monotonic() - cached.at < recheck_interval():
            return cached.ids
        if not socket and cached.root is info.root_value:
            return cached.ids
    ids: frozenset[str] | None
    if isinstance(actor, User) and actor.is_active and actor.is_superuser:
        ids = None
    else:
        pks = account_ids(actor, Action.DESTINATION_MANAGE).values_list("pk", flat=True)
        ids = frozenset(str(pk) for pk in pks)
    store["_admin_accounts"] = _AdminAccounts(
        root=info.root_value, actor=key, at=time.monotonic(), ids=ids
    )
    return ids


# --- Object types ----------------------------------------------------------------------------


@strawberry_django.type(models.Destination, name="Destination")
class Destination:
    id: strawberry.ID
    account: Account
    url: str
    http_method: HttpMethod  # type: ignore[valid-type]

    @strawberry_django.field(
        only=["headers", "account_id"],
        description="Extra request headers: an object of header name to string value. The "
        "values (often the receiver's API keys) are readable by ADMINs of the destination's "
        'account only: everyone else sees each name with the value "********". Write-only '
        "for NORMAL_USERs: destinationUpdate still replaces them.",
    )
    def headers(self, root: models.Destination, info: Info) -> JSON:
        ids = _admin_account_ids(info)
        if ids is None or str(root.account_id) in ids:
            return JSON(root.headers)
        return JSON(dict.fromkeys(root.headers, HEADER_VALUE_MASK))

    is_active: bool = strawberry_django.field(
        description="Inactive destinations receive no new deliveries."
    )
    disabled_at: datetime | None = strawberry_django.field(description="Null while active.")

    @strawberry_django.field(
        only=["is_active", "disabled_cause"], description="Why it is inactive; null while active."
    )
    def disabled_cause(self, root: models.Destination) -> DisabledCause | None:  # type: ignore[valid-type]
        if root.is_active:
            return None
        # Destinations disabled before causes were kept: by a person.
        return models.DisabledCause(root.disabled_cause or models.DisabledCause.USER)

    @strawberry_django.field(
        only=["is_active", "disabled_reason"],
        description="What disabled it, in words; null while active.",
    )
    def disabled_reason(self, root: models.Destination) -> str | None:
        return None if root.is_active else root.disabled_reason

    @strawberry_django.field(
        only=["is_active", "max_in_flight", "account_id"],
        description="Circuit breaker and delivery figures, shared by every worker.",
    )
    def health(self, root: models.Destination) -> DestinationHealth:
        return DestinationHealth(**vars(destination_health(root)))

    max_in_flight: int | None = strawberry_django.field(
        description="Concurrent requests to this destination; null: the server's default "
        "(DELIVERY_MAX_IN_FLIGHT, 1 unless configured)."
    )
    rate_limit: int | None = strawberry_django.field(
        description="Requests per second to this destination, shared by every worker; null: "
        "the server's default (DELIVERY_RATE_LIMIT, none unless configured)."
    )
    created_at: datetime
    updated_at: datetime

    @strawberry_django.field(
        only=["signing_secret", "account_id"],
        description="Standard Webhooks secret (`whsec_…`) that signs every request. Readable by "
        "ADMINs of the destination's account only: null for everyone else.",
    )
    def signing_secret(self, root: models.Destination, info: Info) -> str | None:
        ids = _admin_account_ids(info)
        if ids is None or str(root.account_id) in ids:
            return root.signing_secret
        return None


@strawberry_django.type(models.Notice, name="Notice")
class Notice:
    id: strawberry.ID
    kind: NoticeKind  # type: ignore[valid-type]
    destination: Destination | None = strawberry_django.field(
        description="Null once the destination has been deleted."
    )
    at: datetime
    detail: str


@strawberry_django.type(models.DeliveryAttempt, name="DeliveryAttempt")
class DeliveryAttempt:
    number: int = strawberry_django.field(description="1 for the first try, then 2, 3, …")
    started_at: datetime
    duration_ms: int
    status_code: int | None = strawberry_django.field(
        description="The destination's HTTP status; null when no response came (timeout, "
        "connection error, refused address)."
    )
    response_headers: JSON
    response_body: str
    error_class: str = strawberry_django.field(
        description="Why the try failed, as a class name (empty on success)."
    )
    error_message: str


@strawberry_django.type(models.DeliveryLog, name="DeliveryLog")
class DeliveryLog:
    id: strawberry.ID
    account: Account
    destination: Destination | None = strawberry_django.field(
        description="Null once the destination has been deleted (its logs stay)."
    )
    received_timestamp: datetime = strawberry_django.field(
        description="When the event was received."
    )
    processed_timestamp: datetime | None = strawberry_django.field(
        description="When the latest try (or the decision to give up) finished; null before."
    )
    status: LogStatus = strawberry_django.field(  # type: ignore[valid-type]
        description="QUEUED, SENDING, RETRYING, SUCCESS or FAILED (see LogStatus)."
    )
    webhook_id: str = strawberry_django.field(
        description="The `webhook-id` header every try of this delivery carries (stable across "
        "retries, unique across installations): match receivers' logs with it."
    )
    attempt_count: int
    next_attempt_at: datetime | None
    last_status_code: int | None = strawberry_django.field(
        description="HTTP status of the latest try; null before the first or without response."
    )
    last_error: str
    updated_at: datetime = strawberry_django.field(
        description="When the log last changed (status, try count, next try): with `id`, the "
        "order in which logUpdates replays changes after a reconnect."
    )
    attempts: list[DeliveryAttempt] = strawberry_django.field(
        description="Every HTTP try, in order."
    )

    @strawberry_django.field(
        only=["updated_at"],
        description="This change's place in logUpdates' order (opaque): keep the last one you "
        "received and pass it as logUpdates(after:) when you subscribe again, to get every "
        "change after it, none twice.",
    )
    def cursor(self, root: models.DeliveryLog) -> str:
        return live.cursor(root.updated_at, root.pk)

    @strawberry_django.field(
        only=["event__event_id"],
        select_related=["event"],
        description="The event's id: its CL-X-EVENT-ID, or the one generated at ingest.",
    )
    def event_id(self, root: models.DeliveryLog) -> str:
        return root.event.event_id

    @strawberry_django.field(
        only=["event__payload"],
        select_related=["event"],
        description="The JSON object received (the event payload).",
    )
    def received_data(self, root: models.DeliveryLog) -> JSON:
        return root.event.payload

    @classmethod
    def get_queryset(
        cls, queryset: QuerySet[models.DeliveryLog], info: Info, **kwargs: Any
    ) -> QuerySet[models.DeliveryLog]:
        # Logs nested in another type (Event.logs) come in creation order, not in whatever
        # order the database finds them. `logs` orders its own pages.
        return queryset.order_by("id")


@strawberry_django.type(models.Event, name="Event")
class Event:
    id: strawberry.ID
    event_id: str = strawberry_django.field(
        description="The CL-X-EVENT-ID it was sent with, or the one generated at ingest."
    )
    received_at: datetime
    size: int
    payload: JSON = strawberry_django.field(description="The JSON object received.")
    logs: list[DeliveryLog] = strawberry_django.field(
        description="One delivery per destination that was active when the event arrived."
    )


# --- Pagination ------------------------------------------------------------------------------


@strawberry.type(name="LogEdge")
class LogEdge(relay.Edge[DeliveryLog]):  # type: ignore[type-var]
    pass


@strawberry.type(name="LogConnection", description="A page of delivery logs.")
class LogConnection(relay.Connection[DeliveryLog]):  # type: ignore[type-var]
    edges: list[LogEdge] = strawberry.field(  # type: ignore[assignment]
        description="The logs of this page, in the requested order."
    )
    total_count_qs: strawberry.Private[QuerySet[models.DeliveryLog] | None] = None

    @strawberry.field(description="How many logs match the filters, across all pages.")
    def total_count(self) -> int:
        assert self.total_count_qs is not None
        count: int = django_resolver(self.total_count_qs.count)()  # type: ignore[assignment]
        return count


@strawberry.type
class LogsRetryResult:
    count: int = strawberry.field(description="How many failed logs were queued again.")


# --- Filters ---------------------------------------------------------------------------------


@strawberry.input(description="A time range; both ends are inclusive and optional.")
class DateTimeRange:
    gte: datetime | None = None
    lte: datetime | None = None


@strawberry.input(description="Narrow a list of destinations; every given field must match.")
class DestinationFilter:
    account_id: strawberry.ID | None = None
    http_method: HttpMethod | None = None  # type: ignore[valid-type]
    is_active: bool | None = None
    url_contains: str | None = strawberry.field(
        default=None, description="Case-insensitive substring of the URL."
    )
    health: list[HealthState] | None = strawberry.field(  # type: ignore[valid-type]
        default=None, description="Any of these health states (null or empty: any)."
    )


@strawberry.input(
    description="Narrow delivery logs; every given field must match. Filters only narrow what "
    "you may see: a foreign accountId matches nothing."
)
class LogFilter:
    account_id: strawberry.ID | None = None
    destination_id: strawberry.ID | None = None
    status: list[LogStatus] | None = strawberry.field(  # type: ignore[valid-type]
        default=None, description="Any of these statuses (null or empty: any status)."
    )
    event_id: str | None = strawberry.field(default=None, description="The event's CL-X-EVENT-ID.")
    received_timestamp: DateTimeRange | None = None
    processed_timestamp: DateTimeRange | None = None
    status_code: int | None = strawberry.field(
        default=None, description="HTTP status of the latest try."
    )


def destination_filters(f: DestinationFilter | None) -> selectors.DestinationFilters:
    if f is None:
        return selectors.DestinationFilters()
    return selectors.DestinationFilters(
        account_id=None if f.account_id is None else str(f.account_id),
        http_method=None if f.http_method is None else str(f.http_method),
        is_active=f.is_active,
        url_contains=f.url_contains,
    )  # `health` is applied by the resolver: it is not a column


def log_filters(f: LogFilter | None) -> selectors.LogFilters:
    if f is None:
        return selectors.LogFilters()
    received = f.received_timestamp or DateTimeRange()
    processed = f.processed_timestamp or DateTimeRange()
    return selectors.LogFilters(
        account_id=None if f.account_id is None else str(f.account_id),
        destination_id=None if f.destination_id is None else str(f.destination_id),
        statuses=[str(s) for s in f.status] if f.status else None,
        event_id=f.event_id,
        received_gte=received.gte,
        received_lte=received.lte,
        processed_gte=processed.gte,
        processed_lte=processed.lte,
        status_code=f.status_code,
    )

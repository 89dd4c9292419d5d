"""Live delivery status."""

import asyncio
import json
from collections.abc import AsyncGenerator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import strawberry
from asgiref.sync import sync_to_async
from graphql import ExecutionResult, OperationType
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types import Info
from strawberry.types.nodes import SelectedField, Selection

from delivery import live, models, selectors
from identity.errors import ErrorCode, Unauthenticated, invalid
from identity.models import User
from identity.permissions import Action
from schema import context
from schema.delivery_types import DeliveryLog, Destination, LogStatus, Notice, prefetch_health


@strawberry.input(description="Narrow a live stream of delivery logs.")
class LogUpdateFilter:
    destination_id: strawberry.ID | None = strawberry.field(
        default=None,
        description="Only this destination's logs (a malformed id matches nothing, as in `logs`).",
    )
    destination: strawberry.ID | None = strawberry.field(
        default=None,
        description="The same as destinationId, which it is ignored beside.",
        deprecation_reason="Use destinationId, the name every other filter uses.",
    )
    status: list[LogStatus] | None = strawberry.field(  # type: ignore[valid-type]
        default=None, description="Any of these statuses (null or empty: any status)."
    )
    event_id: str | None = strawberry.field(default=None, description="The event's CL-X-EVENT-ID.")


async def _load_access(
    keys: list[selectors.AccessKey],
) -> dict[selectors.AccessKey, frozenset[str]]:
    return await sync_to_async(selectors.viewable_account_ids_many)(keys)


# Which accounts' logs (or destinations) a user may view, shared by the user's streams in
# this process and loaded for all users at once.
_access: context.Recent[selectors.AccessKey, frozenset[str]] = context.Recent(_load_access)


async def _viewable(user: User, account_id: str | None, action: Action) -> frozenset[str]:
    return await _access.get((user.pk, user.is_superuser, account_id, action))


def _access_check(info: Info, account_id: strawberry.ID | None, action: Action) -> Any:
    """live.AccessCheck of the socket's user for `action` in `account_id` (None: all)."""
    ws = info.context["ws"]
    asked = str(account_id) if account_id is not None else None

    async def access() -> frozenset[str]:
        # The user as the socket's watchdog last resolved its token (at most one re-check
        # interval ago); a token no longer valid closes the socket, and its streams with it.
        user = ws.scope.get("user")
        if not isinstance(user, User):
            raise Unauthenticated()
        return await _viewable(user, asked, action)

    return access


@strawberry.type(
    name="DestinationUpdate",
    description="A change of a destination's health: a notice (breaker opened or closed, "
    "disabled, re-enabled), or its figures (notice null).",
)
class DestinationUpdate:
    destination: Destination | None = strawberry.field(
        description="As it is now, with its health; null once deleted."
    )
    notice: Notice | None


def _destination_now(destination_id: int | None) -> models.Destination | None:
    found = (
        None
        if destination_id is None
        else models.Destination.objects.filter(pk=destination_id).first()
    )
    return None if found is None else prefetch_health([found])[0]


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="Every status change (queued, sending, retrying, success, failed) of the "
        "delivery logs of `accountId` (default: all your accounts), for members of the account "
        "(any role). With `after` (the `cursor` of the last change you received) or `since` (a "
        "time), first the current state of every matching log changed after it (strictly "
        "after: not the change at `after`, nor one exactly at `since`), in (updatedAt, id) "
        "order, then live changes, with no gap or duplicate at the seam. Over the WebSocket "
        "(`graphql-transport-ws`), token in the connection_init payload: {authToken} or "
        '{Authorization: "Bearer <token>"}; only '
        "subscriptions are served there (queries and mutations: operation_not_allowed). Access "
        "is re-checked at least every LIVE_RECHECK_SECONDS (default 1), idle or not: losing "
        "membership of an account drops its changes and the stream completes when no account "
        "is left; a revoked or expired token or a deactivated user closes the socket (4403)."
    )
    async def log_updates(
        self,
        info: Info,
        account_id: strawberry.ID | None = None,
        filters: LogUpdateFilter | None = None,
        since: datetime | None = None,
        after: str | None = None,
    ) -> AsyncGenerator[DeliveryLog, None]:
        f = filters or LogUpdateFilter()
        if after is not None and since is not None:
            raise invalid(ErrorCode.INVALID, "Pass `after` or `since`, not both.")
        position = None if after is None else live.parse_cursor(after)
        stream = live.log_stream(
            access=_access_check(info, account_id, Action.LOG_VIEW),
            filters=selectors.LogFilters(
                destination_id=_destination_id(f),
                statuses=[_status_value(s) for s in f.status] if f.status else None,
                event_id=f.event_id,
            ),
            since=_aware(since),
            after=position,
            listen=live.listen,
            own_fields=(selected := _selected_fields(info)) is not None and selected <= _OWN_FIELDS,
            event_ids=selected is not None and "eventId" in selected,
        )
        direct = _DirectFrames.of(info)
        async for log in stream:
            if direct is not None and await direct.sent(log):
                continue
            yield log  # type: ignore[misc]

    @strawberry.subscription(
        description="Every health change of the destinations of `accountId` (default: all "
        "your accounts), for members of the account (any role): each notice as it is recorded "
        "(breaker opened or closed, disabled, re-enabled) and, at most once a second per "
        "destination, its moving figures. With `since`, first every notice recorded after "
        "that time (strictly after), then live changes, with no gap or duplicate at the "
        "seam. Same socket, authentication and re-checks as logUpdates."
    )
    async def destination_updates(
        self,
        info: Info,
        account_id: strawberry.ID | None = None,
        since: datetime | None = None,
    ) -> AsyncGenerator[DestinationUpdate, None]:
        stream = live.destination_stream(
            access=_access_check(info, account_id, Action.DESTINATION_VIEW),
            since=_aware(since),
            listen=live.listen,
        )
        async for change in stream:
            destination = await sync_to_async(_destination_now)(change.destination_id)
            yield DestinationUpdate(
                destination=destination,  # type: ignore[arg-type]
                notice=change.notice,  # type: ignore[arg-type]
            )


class LiveExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """Executes a subscription event once per process for all the streams that yield the same
    shared row (delivery.live: a row built from a message, yielded only to streams that select
    nothing but its own fields, which do not depend on who asks) with the same document,
    operation and variables; the others get that result. 1,000 subscribers of one query: one
    execution per change instead of 1,000."""

    def execute_operation(self, serially: bool | None = None) -> Any:
        results = live.shared_results(self.root_value)
        operation = self.operation
        if (
            results is None
            or operation.operation is not OperationType.SUBSCRIPTION
            or not operation.loc
        ):
            return super().execute_operation(serially)
        # As resolvers see them (info.variable_values): graphql-core 3.3 wraps them.
        variables = getattr(self.variable_values, "coerced", self.variable_values)
        key = _operation_key(operation, variables)
        if key not in results:
            result = super().execute_operation(serially)
            results[key] = asyncio.ensure_future(result) if self.is_awaitable(result) else result
        return results[key]


def _operation_key(operation: Any, variables: Any) -> tuple[str, str | None, str]:
    """What identical subscriptions have in common: document, operation name, variables."""
    return (operation.loc.source.body, operation.name and operation.name.value, _frozen(variables))


# The socket handler and operation id of the subscription a task runs (set by
# schema.consumers for each operation's task).
live_operation: ContextVar[tuple[Any, str] | None] = ContextVar("live_operation", default=None)


class _DirectFrames:
    """Sends a shared row's change (see LiveExecutionContext) to this subscription as the
    `next` message text encoded once per change for every identical subscription of the
    process, instead of through the operation's result pipeline (graphql-core's per-event
    execution, strawberry's result and extension hooks, JSON encoding): the same text that
    pipeline writes, for a fraction of its cost per subscriber. A row whose result is not
    there yet (the first subscriber of the change executes it) or failed goes the usual way."""

    def __init__(self, handler: Any, operation_id: str, key: tuple[str, str | None, str]) -> None:
        self.handler, self.operation_id, self.key = handler, operation_id, key
        self.prefix = '{"id":' + json.dumps(operation_id) + ',"type":"next","payload":'

    @classmethod
    def of(cls, info: Info) -> "_DirectFrames | None":
        found = live_operation.get()
        if found is None or not info.operation.loc:
            return None
        return cls(*found, _operation_key(info.operation, info.variable_values))

    async def sent(self, row: object) -> bool:
        results = live.shared_results(row)
        if results is None:
            return False
        payload = results.get((self.key, "payload"))
        if payload is None:
            result = results.get(self.key)
            if isinstance(result, asyncio.Future):  # being executed: wait for it
                try:
                    result = await asyncio.shield(result)
                except Exception:  # the first subscriber's pipeline reports it
                    return False
            if not isinstance(result, ExecutionResult) or result.errors or result.data is None:
                return False
            payload = results[self.key, "payload"] = json.dumps(
                {"data": result.data}, separators=(",", ":")
            )
        operation = self.handler.operations.get(self.operation_id)
        if operation is None or operation.completed:
            return False
        await self.handler.websocket.ws_consumer.send(self.prefix + payload + "}")
        return True


def _frozen(variables: Any) -> str:
    return json.dumps(variables, sort_keys=True, default=str)


# DeliveryLog fields that a live change's message carries (delivery/live.log_message).
_OWN_FIELDS = frozenset(
    (
        "__typename",
        "id",
        "status",
        "attemptCount",
        "webhookId",
        "receivedTimestamp",
        "processedTimestamp",
        "nextAttemptAt",
        "lastStatusCode",
        "lastError",
        "eventId",
        "updatedAt",
        "cursor",
    )
)


def _aware(moment: datetime | None) -> datetime | None:
    """A DateTime argument without a UTC offset is taken as UTC (as the API writes them)."""
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


def _selected_fields(info: Info) -> set[str] | None:
    """The names of the fields selected on each log (through fragments too), or None when
    an object (destination, account, attempts) is selected."""
    names: set[str] = set()

    def walk(selections: list[Selection]) -> bool:
        for selection in selections:
            if isinstance(selection, SelectedField):
                if selection.selections:
                    return False
                names.add(selection.name)
            elif not walk(selection.selections):
                return False
        return True

    (root,) = info.selected_fields
    return names if walk(root.selections) else None


def _destination_id(f: LogUpdateFilter) -> str | None:
    chosen = f.destination_id if f.destination_id is not None else f.destination
    return None if chosen is None else str(chosen)


def _status_value(status: object) -> str:
    return str(getattr(status, "value", status)).lower()

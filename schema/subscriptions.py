"""Live delivery status."""

from collections.abc import AsyncGenerator
from datetime import datetime

import strawberry
from strawberry.types import Info

from delivery import live
from schema.delivery_types import DeliveryLog, LogStatus


@strawberry.input(description="Narrow a live stream of delivery logs.")
class LogUpdateFilter:
    destination: strawberry.ID | None = None
    status: list[LogStatus] | None = None  # type: ignore[valid-type]
    event_id: str | None = None


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="Every status change (queued, sending, retrying, success, failed) of the "
        "delivery logs of `accountId` (default: all your accounts), for members of the account. "
        "With `since`, first the current state of every matching log changed after that time, "
        "then live changes, with no gap or duplicate at the seam. Token in the connection_init "
        "payload: {authToken}. Losing access ends the stream."
    )
    async def log_updates(
        self,
        info: Info,
        account_id: strawberry.ID | None = None,
        filters: LogUpdateFilter | None = None,
        since: datetime | None = None,
    ) -> AsyncGenerator[DeliveryLog, None]:
        ws = info.context["ws"]
        f = filters or LogUpdateFilter()
        stream = live.log_stream(
            token=ws.auth_token,
            account_id=str(account_id) if account_id is not None else None,
            filters=live.LiveFilters(
                destination_id=str(f.destination) if f.destination is not None else None,
                statuses=tuple(_status_value(s) for s in f.status or ()),
                event_id=f.event_id,
            ),
            since=since,
            listen=ws.listen_to_channel,
        )
        async for log in stream:
            yield log  # type: ignore[misc]


def _status_value(status: object) -> str:
    return str(getattr(status, "value", status)).lower()

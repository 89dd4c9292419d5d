"""How deliveries are paced: the retry schedule, leases, batch sizes and per-destination
concurrency. Pure functions of the settings (and, for concurrency, of the destination)."""

import random
from datetime import timedelta

from django.conf import settings

from delivery.models import Destination


def retry_delay(attempt_in_round: int, retry_after: float | None = None) -> float | None:
    """Seconds until the next try after attempt number `attempt_in_round` (1-based) failed
    transiently, or None when the schedule is used up. Jitter only adds; a Retry-After (capped)
    can only push the try later."""
    schedule = settings.DELIVERY_RETRY_SCHEDULE
    if attempt_in_round > len(schedule):
        return None
    delay = schedule[attempt_in_round - 1]
    delay += delay * settings.DELIVERY_RETRY_JITTER * random.random()  # noqa: S311
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.DELIVERY_RETRY_AFTER_CAP))
    return delay


def send_timeout() -> float:
    """The longest one send can take: connect plus read timeout."""
    return float(settings.DELIVERY_CONNECT_TIMEOUT + settings.DELIVERY_READ_TIMEOUT)


def lease() -> timedelta:
    """How long a `sending` claim holds before the sweeper may take the log back.

    A lane claims a batch under one lease and sends it in order; it gives back the unsent rest
    of the batch when one send is slow (DELIVERY_SLOW_SECONDS), when its time slice ends, and
    before a send that could outlive the lease: no claimed log is sent after its lease."""
    return timedelta(seconds=send_timeout() + settings.DELIVERY_SWEEP_GRACE_SECONDS)


def batch_size(*, slow: bool) -> int:
    """Logs a lane claims at once: one at a time for a destination that answers slowly (or
    has not answered yet)."""
    return 1 if slow else int(settings.DELIVERY_BATCH_SIZE)


def max_in_flight(destination: Destination) -> int:
    """Lanes (concurrent requests) a destination may have at once: its own limit, else its
    account's default (`account_max_in_flight`, which engine.destination_copies loads with
    the destination), else DELIVERY_MAX_IN_FLIGHT."""
    return (
        destination.max_in_flight
        or getattr(destination, "account_max_in_flight", None)
        or int(settings.DELIVERY_MAX_IN_FLIGHT)
    )


def lane_slot_key(destination_id: int, slot: int) -> str:
    """The cache key of a destination's lane slot (delivery/engine.py takes and frees them;
    the health figures count the ones held)."""
    return f"lane:{destination_id}:{slot}"

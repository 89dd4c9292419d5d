"""What the delivery GraphQL tests share besides fixtures: a snapshot of every delivery row, and
the exact OperationInfo payloads of the common refusals."""

from typing import Any

from delivery.models import DeliveryAttempt, DeliveryLog, Destination, Event
from tests.expect import (  # noqa: F401  (re-exported for the tests)
    PERMISSION_DENIED,
    UNAUTHENTICATED,
    invalid,
    not_found,
    operation_info,
)

# Selected on every mutation so that a refusal shows up as an exact payload.
OPERATION_INFO = "... on OperationInfo { messages { kind code field message } }"


def db_state() -> dict[str, list[tuple[Any, ...]]]:
    """Every column of every delivery row, to prove that a refused call wrote nothing."""
    return {
        "destinations": list(Destination.objects.order_by("pk").values_list()),
        "events": list(Event.objects.order_by("pk").values_list()),
        "logs": list(DeliveryLog.objects.order_by("pk").values_list()),
        "attempts": list(DeliveryAttempt.objects.order_by("pk").values_list()),
    }

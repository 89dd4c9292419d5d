"""What the delivery GraphQL tests share besides fixtures: a snapshot of every delivery row, and
the exact OperationInfo payloads of the common refusals."""

from typing import Any

from delivery.models import DeliveryAttempt, DeliveryLog, Destination, Event

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


def operation_info(kind: str, code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {
        "__typename": "OperationInfo",
        "messages": [{"kind": kind, "code": code, "field": field, "message": message}],
    }


def not_found(what: str) -> dict[str, Any]:
    return operation_info("ERROR", "not_found", f"{what} not found.")


def invalid(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return operation_info("VALIDATION", code, message, field)


UNAUTHENTICATED = operation_info("PERMISSION", "unauthenticated", "Authentication required.")
PERMISSION_DENIED = operation_info(
    "PERMISSION", "permission_denied", "You do not have permission to do this."
)

"""Exact GraphQL payloads that tests expect, shared by every suite."""

from typing import Any


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

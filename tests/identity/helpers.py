"""What the identity tests share besides fixtures: a snapshot of every identity row, and the
exact OperationInfo payloads of the common refusals."""

from typing import Any

from identity.models import Account, AuthToken, Invitation, Membership, User

# Selected on every mutation so that a refusal shows up as an exact payload.
OPERATION_INFO = "... on OperationInfo { messages { kind code field message } }"


def db_state() -> dict[str, list[tuple[Any, ...]]]:
    """Every column of every identity row, to prove that a refused call wrote nothing.

    `AuthToken.last_used_at` is left out: authenticating a request refreshes it, whatever the
    operation then does.
    """
    return {
        "users": list(User.objects.order_by("pk").values_list()),
        "accounts": list(Account.objects.order_by("pk").values_list()),
        "memberships": list(Membership.objects.order_by("pk").values_list()),
        "invitations": list(Invitation.objects.order_by("pk").values_list()),
        "tokens": list(
            AuthToken.objects.order_by("pk").values_list(
                "pk", "user_id", "key_hash", "prefix", "created_at", "expires_at"
            )
        ),
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

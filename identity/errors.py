"""Error codes and the exceptions services raise.

Codes are part of the public API: clients switch on them, so values never change.
`NotFound` and `Forbidden` subclass Django's own exceptions so transports that already handle
`ObjectDoesNotExist` / `PermissionDenied` keep working, and carry a `code` attribute.
"""

from enum import StrEnum

from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, ValidationError


class ErrorCode(StrEnum):
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    INVALID = "invalid"
    EMAIL_TAKEN = "email_taken"
    INVALID_CREDENTIALS = "invalid_credentials"
    INVALID_PASSWORD = "invalid_password"
    THROTTLED = "throttled"
    LAST_ADMIN = "last_admin"
    ALREADY_MEMBER = "already_member"
    ALREADY_INVITED = "already_invited"  # retired: re-inviting now refreshes the invitation
    INVALID_INVITATION = "invalid_invitation"
    INVALID_VERIFICATION = "invalid_verification"
    OPERATION_NOT_ALLOWED = "operation_not_allowed"  # a query or mutation over the WebSocket
    INVALID_CURSOR = "invalid_cursor"  # logUpdates(after:) that is no DeliveryLog.cursor


class NotFound(ObjectDoesNotExist):
    code = ErrorCode.NOT_FOUND.value

    def __init__(self, what: str = "Object") -> None:
        super().__init__(f"{what} not found.")


class Forbidden(PermissionDenied):
    code = ErrorCode.PERMISSION_DENIED.value

    def __init__(self, message: str = "You do not have permission to do this.") -> None:
        super().__init__(message)


class Unauthenticated(PermissionDenied):
    code = ErrorCode.UNAUTHENTICATED.value

    def __init__(self, message: str = "Authentication required.") -> None:
        super().__init__(message)


def invalid(code: ErrorCode | str, message: str, *, field: str | None = None) -> ValidationError:
    """A ValidationError with a stable code, tied to `field` when one input is at fault."""
    error = ValidationError(message, code=str(code))
    if field is None:
        return error
    return ValidationError({field: error})

"""What the identity tests share besides fixtures: a snapshot of every identity row, and the
exact OperationInfo payloads of the common refusals."""

import re
from collections.abc import Callable
from typing import Any

from django.core import mail

from identity.models import Account, AuthToken, Invitation, Membership, User
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


# `gql` with the on-commit callbacks (the mails) run, as tests/identity/conftest.py's `call`.
Call = Callable[..., dict[str, Any]]


def mailed_token(message: mail.EmailMessage, prefix: str) -> str:
    """The one secret with `prefix` that a mail carries."""
    tokens = set(re.findall(re.escape(prefix) + r"[\w-]+", str(message.body)))
    assert len(tokens) == 1, message.body
    return tokens.pop()

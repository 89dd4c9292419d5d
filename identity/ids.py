"""Ids from the outside world (GraphQL arguments, filters), checked before they reach a query.

A malformed id must answer exactly like a missing one, never as a database error."""

import uuid

_MAX_BIGINT = 2**63 - 1


def parse_uuid(value: object) -> uuid.UUID | None:
    """The UUID `value` names (accounts), or None when it cannot name one."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def parse_pk(value: object) -> int | None:
    """The integer primary key `value` names, or None when it cannot name a row.

    Only ASCII digits count: `str.isdigit` alone accepts "²", and `int` accepts " 1" or "1_0"."""
    text = str(value)
    if not (text.isascii() and text.isdigit()):
        return None
    pk = int(text)
    return pk if 0 < pk <= _MAX_BIGINT else None

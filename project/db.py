"""Database conflicts that are worth one more try, and the answer when they persist."""

from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, OperationalError, connection, models, transaction
from django.db.backends.utils import CursorWrapper

T = TypeVar("T")

# PostgreSQL: deadlock_detected, serialization_failure.
_CONTENDED_SQLSTATES = frozenset({"40P01", "40001"})


class Contended(ValidationError):
    """A write lost to concurrent writes twice in a row. Code `unavailable`: retry later
    (incoming_data answers 503 with Retry-After; a GraphQL mutation an `OperationInfo`)."""

    def __init__(self) -> None:
        super().__init__("Busy with concurrent changes; retry.", code="unavailable")


def is_contended(error: BaseException) -> bool:
    """Whether `error` is a deadlock or serialization failure reported by PostgreSQL."""
    cause = error.__cause__
    return isinstance(error, OperationalError) and (
        getattr(cause, "sqlstate", None) in _CONTENDED_SQLSTATES
        or getattr(cause, "pgcode", None) in _CONTENDED_SQLSTATES
    )


def retry_contended(write: Callable[[], T], *, integrity: bool = False) -> T:
    """Run `write` (a function that opens its own transaction); run it once more when it lost a
    deadlock or serialization conflict — or, with `integrity`, a foreign-key race settled at
    commit — and raise Contended if the second try loses too. Inside an outer transaction
    nothing can be retried: errors pass unchanged."""
    retryable: tuple[type[Exception], ...] = (
        (OperationalError, IntegrityError) if integrity else (OperationalError,)
    )
    for attempt in range(2):
        try:
            return write()
        except retryable as error:
            if transaction.get_connection().in_atomic_block:
                raise
            if isinstance(error, OperationalError) and not is_contended(error):
                raise
            if attempt:
                raise Contended from error
    raise AssertionError("unreachable")


def lock_referencing_rows(instance: models.Model) -> None:
    """Lock (SELECT ... FOR UPDATE) every row that references `instance` through a foreign
    key, before a cascading delete collects them: a transaction that is changing one of those
    rows (a worker recording a delivery attempt of a log) finishes first and its new rows are
    collected, or it waits and then finds the row gone — instead of adding a row the cascade
    missed, which fails the delete at commit. PostgreSQL only; elsewhere a no-op query."""
    for relation in instance._meta.get_fields(include_hidden=True):
        if not (relation.one_to_many and relation.auto_created and not relation.concrete):
            continue
        model = relation.related_model
        if not (isinstance(model, type) and issubclass(model, models.Model)):
            continue
        rows = model._base_manager.select_for_update().filter(
            **{relation.field.name: instance.pk}  # type: ignore[union-attr]
        )
        list(rows.values_list("pk", flat=True))


def prepared_cursor(*, health_check: bool = True) -> CursorWrapper:
    """A cursor of the default database for the hot paths' raw statements. On PostgreSQL, with
    DATABASE_PREPARED_STATEMENTS (the default), it binds parameters on the server and psycopg
    prepares each statement on a connection the first time it runs there: parsed and planned
    once per connection instead of on every run. (Django's own cursors bind on the client and
    prepare nothing; it leaves preparing off because PgBouncer before 1.21 in transaction mode
    cannot route prepared statements: turn the setting off behind such a pooler.) It is
    Django's cursor wrapper all the same: health check, error translation, execute wrappers
    and query logging apply. Without `health_check`, a persistent connection is not checked
    with a round trip first (CONN_HEALTH_CHECKS): a connection the server closed meanwhile
    fails this statement instead (OperationalError), and Django closes it when the request
    ends. Elsewhere, and while queries are logged (DEBUG, or a test that captures them:
    psycopg keeps no text of a prepared statement to log), Django's cursor."""
    if (
        connection.vendor != "postgresql"
        or not settings.DATABASE_PREPARED_STATEMENTS
        or connection.queries_logged
    ):
        return connection.cursor()
    from django.db.backends.postgresql import base

    if health_check:
        connection.close_if_health_check_failed()
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:
        # Only cursors that bind on the server prepare: Django's (client-side) never do.
        raw.prepare_threshold = 0
    with connection.wrap_database_errors:
        cursor = base.ServerBindingCursor(raw)  # type: ignore[attr-defined]
        return connection._prepare_cursor(cursor)  # type: ignore[attr-defined]

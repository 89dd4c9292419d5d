"""Reads, each scoped to what the actor may see before any filter is applied."""

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import QuerySet

from delivery.models import DeliveryLog, Destination, Event, Notice
from identity.ids import parse_pk, parse_uuid
from identity.models import Account, Membership
from identity.permissions import Action, Actor, account_ids, roles_allowing


@dataclass
class DestinationFilters:
    account_id: str | None = None
    http_method: str | None = None
    is_active: bool | None = None
    url_contains: str | None = None


def destination_list(
    *, actor: Actor, filters: DestinationFilters | None = None
) -> QuerySet[Destination]:
    """Destinations of the actor's accounts, narrowed by `filters`."""
    destinations = Destination.objects.filter(
        account_id__in=account_ids(actor, Action.DESTINATION_VIEW)
    )
    f = filters or DestinationFilters()
    if f.account_id is not None:
        if parse_uuid(f.account_id) is None:
            return Destination.objects.none()
        destinations = destinations.filter(account_id=f.account_id)
    if f.http_method is not None:
        destinations = destinations.filter(http_method=f.http_method)
    if f.is_active is not None:
        destinations = destinations.filter(is_active=f.is_active)
    if f.url_contains:
        destinations = destinations.filter(url__icontains=f.url_contains)
    return destinations.order_by("created_at", "id")


def destination_get(*, actor: Actor, destination_id: str | int) -> Destination | None:
    """One visible destination, or None when missing or foreign (indistinguishable)."""
    if parse_pk(destination_id) is None:
        return None
    return destination_list(actor=actor).filter(pk=destination_id).first()


def notice_list(
    *, actor: Actor, account_id: str, destination_id: str | None = None
) -> QuerySet[Notice]:
    """Notices of one of the actor's accounts (any role), newest first; a missing, foreign or
    malformed account or destination id matches nothing (as the list filters do)."""
    account_pk = parse_uuid(account_id)
    if account_pk is None:
        return Notice.objects.none()
    notices = Notice.objects.filter(
        account_id=account_pk, account_id__in=account_ids(actor, Action.DESTINATION_VIEW)
    )
    if destination_id is not None:
        if parse_pk(destination_id) is None:
            return Notice.objects.none()
        notices = notices.filter(destination_id=destination_id)
    return notices.order_by("-at", "-id")


def destinations_cache_key(account_id: object) -> str:
    return f"destinations:{account_id}"


def forget_destination_ids(account_id: uuid.UUID) -> None:
    """Drop the account's cached destination ids (active_destination_ids) after commit: every
    change of a destination's active set calls this."""
    # A UUID, never the caller's spelling: the key must be the one the ingest path reads.
    key = destinations_cache_key(account_id)
    transaction.on_commit(lambda: cache.delete(key))


def active_destinations(account_id: uuid.UUID) -> QuerySet[Destination]:
    """The destinations the account's events are delivered to."""
    return Destination.objects.filter(account_id=account_id, is_active=True)


def active_destination_ids(account_id: uuid.UUID) -> list[int]:
    """Ids of the account's active destinations, cached for the wake of its lanes; the
    destination services drop the entry on every change."""
    key = destinations_cache_key(account_id)
    ids: list[int] | None = cache.get(key)
    if ids is None:
        ids = list(active_destinations(account_id).order_by("id").values_list("id", flat=True))
        cache.set(key, ids, settings.HOT_PATH_CACHE_SECONDS)
    return ids


@dataclass
class LogFilters:
    account_id: str | None = None
    destination_id: str | None = None
    statuses: list[str] | None = None
    event_id: str | None = None
    received_gte: datetime | None = None
    received_lte: datetime | None = None
    processed_gte: datetime | None = None
    processed_lte: datetime | None = None
    status_code: int | None = None


def log_list(*, actor: Actor, filters: LogFilters | None = None) -> QuerySet[DeliveryLog]:
    """Delivery logs of the actor's accounts, narrowed by `filters` (unordered)."""
    logs = DeliveryLog.objects.filter(account_id__in=account_ids(actor, Action.LOG_VIEW))
    return apply_log_filters(logs, filters or LogFilters())


def apply_log_filters(logs: QuerySet[DeliveryLog], f: LogFilters) -> QuerySet[DeliveryLog]:
    if f.account_id is not None:
        if parse_uuid(f.account_id) is None:
            return logs.none()
        logs = logs.filter(account_id=f.account_id)
    if f.destination_id is not None:
        if parse_pk(f.destination_id) is None:
            return logs.none()
        logs = logs.filter(destination_id=f.destination_id)
    if f.statuses:
        logs = logs.filter(status__in=f.statuses)
    if f.event_id is not None:
        logs = logs.filter(event__event_id=f.event_id)
    for name, bound, value in (
        ("received_timestamp", "gte", f.received_gte),
        ("received_timestamp", "lte", f.received_lte),
        ("processed_timestamp", "gte", f.processed_gte),
        ("processed_timestamp", "lte", f.processed_lte),
    ):
        if value is None:
            continue
        edge = _beyond_calendar(value)
        if edge is None:
            logs = logs.filter(**{f"{name}__{bound}": value})
        elif (edge == "before") == (bound == "gte"):  # >= before year 1, <= after 9999
            logs = logs.filter(**{f"{name}__isnull": False})
        else:
            return logs.none()
    if f.status_code is not None:
        logs = logs.filter(last_status_code=f.status_code)
    return logs


def log_matches(log: DeliveryLog, f: LogFilters) -> bool:
    """Whether one loaded log passes `f`, by the rules of `apply_log_filters` (the live stream
    matches each change in memory with it; a malformed id matches nothing). Needs `log.event`
    loaded when `f.event_id` is set."""
    if f.account_id is not None and parse_uuid(f.account_id) != log.account_id:
        return False
    if f.destination_id is not None:
        pk = parse_pk(f.destination_id)
        if pk is None or log.destination_id != pk:
            return False
    if f.statuses and str(log.status) not in f.statuses:
        return False
    if f.event_id is not None and log.event.event_id != f.event_id:
        return False
    received, processed = log.received_timestamp, log.processed_timestamp
    if f.received_gte is not None and not received >= f.received_gte:
        return False
    if f.received_lte is not None and not received <= f.received_lte:
        return False
    if (f.processed_gte is not None or f.processed_lte is not None) and processed is None:
        return False  # SQL: a comparison with NULL is never true
    if f.processed_gte is not None and not processed >= f.processed_gte:  # type: ignore[operator]
        return False
    if f.processed_lte is not None and not processed <= f.processed_lte:  # type: ignore[operator]
        return False
    return f.status_code is None or log.last_status_code == f.status_code


AccessKey = tuple[int, bool, str | None, Action]  # (user id, superuser, account id asked, action)


def viewable_account_ids_many(keys: Collection[AccessKey]) -> dict[AccessKey, frozenset[str]]:
    """Ids of the accounts where each (active) user may do the action: all of them, or only
    the account asked for (none when it is foreign, missing or malformed); one membership
    query per action for the lot, one account query when a superuser is among them."""
    answers: dict[AccessKey, frozenset[str]] = {}
    for action in {key[3] for key in keys}:
        asked = [key for key in keys if key[3] == action]
        members = Membership.objects.filter(
            user_id__in={key[0] for key in asked if not key[1]}, role__in=roles_allowing(action)
        )
        of: dict[int, set[str]] = {}
        for user_id, account_id in members.values_list("user_id", "account_id"):
            of.setdefault(user_id, set()).add(str(account_id))
        every = (
            {str(pk) for pk in Account.objects.values_list("pk", flat=True)}
            if any(key[1] for key in asked)
            else set()
        )
        for key in asked:
            ids = every if key[1] else of.get(key[0], set())
            if key[2] is not None:
                pk = parse_uuid(key[2])
                ids = {str(pk)} & ids if pk is not None else set()
            answers[key] = frozenset(ids)
    return answers


def _beyond_calendar(value: datetime) -> str | None:
    """ "before" or "after" when `value` in UTC falls outside the years 1 to 9999 (e.g.
    0001-01-01T00:00:00+01:00): Python cannot convert it, as SQLite's adapter does, but every
    stored time is later, respectively earlier. None for every other value."""
    if value.tzinfo is None:
        return None
    try:
        value.astimezone(UTC)
    except OverflowError:
        return "before" if value.year < 5000 else "after"
    return None


def log_get(*, actor: Actor, log_id: str | int) -> DeliveryLog | None:
    if parse_pk(log_id) is None:
        return None
    return log_list(actor=actor).filter(pk=log_id).first()


def event_list(*, actor: Actor) -> QuerySet[Event]:
    return Event.objects.filter(account_id__in=account_ids(actor, Action.LOG_VIEW))


def event_get(*, actor: Actor, event_id: str | int) -> Event | None:
    """An event by its database id or its event id (CL-X-EVENT-ID) within the actor's
    accounts; None when missing, foreign or ambiguous across accounts."""
    events = event_list(actor=actor)
    if parse_pk(event_id) is not None:
        found = events.filter(pk=event_id).first()
        if found is not None:
            return found
    matches = list(events.filter(event_id=str(event_id))[:2])
    return matches[0] if len(matches) == 1 else None

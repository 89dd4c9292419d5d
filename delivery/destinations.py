"""Writes of destinations: create, update, delete, rotate the signing secret.

Input is validated (delivery.validators, DNS included) before the transaction opens, so no
resolver holds a write lock. Every change drops the account's cached destination ids (the
ingest hot path reads them) after commit."""

import uuid

from django.db import transaction
from django.utils import timezone

from delivery import health, outbox, selectors, transport
from delivery.models import AUTOMATIC, DeliveryLog, Destination, DisabledCause, NoticeKind
from delivery.validators import (
    clean_headers,
    clean_max_in_flight,
    clean_method,
    clean_rate_limit,
    clean_url,
)
from identity.errors import NotFound
from identity.ids import parse_uuid
from identity.models import Account
from identity.permissions import Action, Actor, check, require_user
from project.db import retry_contended


def _destination_for_change(actor: Actor, destination_id: str | int, action: Action) -> Destination:
    require_user(actor)
    destination = selectors.destination_get(actor=actor, destination_id=destination_id)
    if destination is None:
        raise NotFound("Destination")
    check(actor, action, destination.account_id)
    return destination


def destination_create(
    *,
    actor: Actor,
    account_id: str | uuid.UUID,
    url: str,
    http_method: str,
    headers: dict[str, str] | None = None,
    is_active: bool = True,
    max_in_flight: int = 0,
    rate_limit: int = 0,
) -> Destination:
    """Add a destination to an account (ADMIN) with a new signing secret.

    `account_id` may be any spelling of a UUID (upper case, no hyphens, braces, `urn:uuid:`):
    it is parsed once here, so the cache entry dropped is the one the ingest path reads.

    `max_in_flight`: concurrent requests to it (0: DELIVERY_MAX_IN_FLIGHT); `rate_limit`:
    requests per second (0: DELIVERY_RATE_LIMIT).

    Raises ValidationError `invalid_url`, `invalid_method`, `invalid_headers`,
    `invalid_max_in_flight`, `invalid_rate_limit`; NotFound when
    the account is missing, foreign or `account_id` names no UUID."""
    user = require_user(actor)
    account_pk = parse_uuid(account_id)
    if account_pk is None:  # a malformed id answers like a missing account
        raise NotFound("Account")
    check(actor, Action.DESTINATION_MANAGE, account_pk)
    values = {
        "url": clean_url(url),
        "http_method": clean_method(http_method),
        "headers": clean_headers({} if headers is None else headers),
        "max_in_flight": clean_max_in_flight(max_in_flight),
        "rate_limit": clean_rate_limit(rate_limit),
    }
    with transaction.atomic():
        check(actor, Action.DESTINATION_MANAGE, account_pk)  # as of the write
        destination = Destination.objects.create(
            account_id=account_pk,
            **values,
            is_active=is_active,
            disabled_cause="" if is_active else DisabledCause.USER,
            disabled_reason="" if is_active else f"Created disabled by {user.email}.",
            disabled_at=None if is_active else timezone.now(),
            signing_secret=transport.new_signing_secret(),
            created_by=user,
            updated_by=user,
        )
        selectors.forget_destination_ids(account_pk)
    return destination


def destination_update(
    *,
    actor: Actor,
    destination_id: str | int,
    url: str | None = None,
    http_method: str | None = None,
    headers: dict[str, str] | None = None,
    is_active: bool | None = None,
    max_in_flight: int | None = None,
    rate_limit: int | None = None,
) -> Destination:
    """Change a destination (ADMIN or NORMAL_USER of its account); None leaves a field as it
    is (`max_in_flight=0`, `rate_limit=0`: back to the default). Deliveries already queued
    use the new settings when they are sent. `is_active=False` disables it (its waiting
    logs fail when their lane takes them), `True` re-enables it as `destination_enable`
    does (an ADMIN's when its health disabled it)."""
    _destination_for_change(actor, destination_id, Action.DESTINATION_UPDATE)
    values: dict[str, object] = {}
    if url is not None:
        values["url"] = clean_url(url)
    if http_method is not None:
        values["http_method"] = clean_method(http_method)
    if headers is not None:
        values["headers"] = clean_headers(headers)
    if max_in_flight is not None:
        values["max_in_flight"] = clean_max_in_flight(max_in_flight)
    if rate_limit is not None:
        values["rate_limit"] = clean_rate_limit(rate_limit)
    with transaction.atomic():
        destination = _destination_for_change(actor, destination_id, Action.DESTINATION_UPDATE)
        for name, value in values.items():
            setattr(destination, name, value)
        if is_active and not destination.is_active:
            _enable(actor, destination)
        elif is_active is False and destination.is_active:
            _disable(actor, destination)
        destination.updated_by = require_user(actor)
        destination.save()
        selectors.forget_destination_ids(destination.account_id)
    return destination


def destination_enable(*, actor: Actor, destination_id: str | int) -> Destination:
    """Re-enable a destination (ADMIN), whoever disabled it: its breaker closes, its failure
    streak is forgotten, and the logs that waited are sent (the caller wakes its lanes). A
    no-op on an active destination."""
    with transaction.atomic():
        destination = _destination_for_change(actor, destination_id, Action.DESTINATION_MANAGE)
        if not destination.is_active:
            _enable(actor, destination)
            destination.updated_by = require_user(actor)
            destination.save()
            selectors.forget_destination_ids(destination.account_id)
    return destination


def _enable(actor: Actor, destination: Destination) -> None:
    """Mark `destination` (locked by the caller's transaction) active again; re-enabling one
    its health disabled takes an ADMIN."""
    if destination.disabled_cause in AUTOMATIC:
        check(actor, Action.DESTINATION_MANAGE, destination.account_id)
    was = destination.disabled_reason or "disabled"
    destination.is_active = True
    destination.disabled_cause, destination.disabled_reason = "", ""
    destination.disabled_at = None
    user = require_user(actor)
    health.notice(destination, NoticeKind.ENABLED, f"Re-enabled by {user.email} (was: {was})")
    pk = destination.pk
    outbox.resume(pk)
    transaction.on_commit(lambda: health.reset(pk))


def _disable(actor: Actor, destination: Destination) -> None:
    user = require_user(actor)
    destination.is_active = False
    destination.disabled_cause = DisabledCause.USER
    destination.disabled_reason = f"Disabled by {user.email}."
    destination.disabled_at = timezone.now()
    health.notice(destination, NoticeKind.DISABLED, destination.disabled_reason)


def destination_delete(*, actor: Actor, destination_id: str | int) -> None:
    """Delete a destination (ADMIN). Its logs stay for the record (destination = null); the
    unfinished ones that are not being sent fail at once with "Destination deleted" (those
    being sent keep the outcome of that try), published after commit.

    Safe while events arrive: the account row is locked first (the row every ingest checks
    first when it commits), so no new log can reference the destination between the moment its
    logs are collected and its deletion; an ingest that waited retries without it. Retried once
    after a deadlock; raises Contended (`unavailable`) if it persists."""
    retry_contended(
        lambda: _destination_delete(actor=actor, destination_id=destination_id), integrity=True
    )


@transaction.atomic
def _destination_delete(*, actor: Actor, destination_id: str | int) -> None:
    destination = _destination_for_change(actor, destination_id, Action.DESTINATION_MANAGE)
    Account.objects.select_for_update().filter(pk=destination.account_id).first()
    selectors.forget_destination_ids(destination.account_id)
    outbox.fail_waiting(DeliveryLog.objects.filter(destination=destination), outbox.DELETED)
    destination.delete()


@transaction.atomic
def destination_rotate_secret(*, actor: Actor, destination_id: str | int) -> Destination:
    """Replace the signing secret (ADMIN); the next request is signed with the new one."""
    destination = _destination_for_change(actor, destination_id, Action.DESTINATION_MANAGE)
    destination.signing_secret = transport.new_signing_secret()
    destination.updated_by = require_user(actor)
    destination.save(update_fields=["signing_secret", "updated_by", "updated_at"])
    return destination

"""Writes of the delivery domain. Background work is scheduled after commit, by id; every
status change of a log is published to live subscribers after commit."""

import logging
import random
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import IntegrityError, transaction
from django.utils import timezone

from delivery import live, selectors, transport
from delivery.errors import DeliveryErrorCode
from delivery.models import (
    DeliveryAttempt,
    DeliveryLog,
    Destination,
    Event,
    HttpMethod,
    LogStatus,
)
from identity.errors import NotFound, invalid
from identity.permissions import Action, Actor, account_ids, check, require_user

logger = logging.getLogger(__name__)

MAX_HEADERS = 50
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
RESERVED_HEADERS = frozenset(
    {
        # hop-by-hop (RFC 9110 §7.6.1) and framing
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        # set by Data Pusher on every request
        "content-type",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)


# --- Destinations ---------------------------------------------------------------------------


def _clean_url(url: str) -> str:
    url = url.strip()
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise invalid(
            DeliveryErrorCode.INVALID_URL, "Enter a valid http(s) URL.", field="url"
        ) from None
    if len(url) > 2000:
        raise invalid(DeliveryErrorCode.INVALID_URL, "At most 2000 characters.", field="url")
    if not settings.DELIVERY_ALLOW_PRIVATE_NETWORKS and not _public_host(url):
        raise invalid(
            DeliveryErrorCode.INVALID_URL,
            "Private, loopback and link-local destinations are not allowed.",
            field="url",
        )
    return url


def _public_host(url: str) -> bool:
    """False when the URL's host is, or resolves to, a non-public address (any of its DNS
    answers). A name that does not resolve now is let through: every delivery checks again."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):  # whatever the resolver says
        return False
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # out of range: no delivery can connect anyway
        port = 80
    try:
        transport.check_host(host, port)
    except transport.BlockedAddress:
        return False
    except OSError:  # does not resolve (requests.ConnectionError)
        return True
    return True


def _clean_method(method: str) -> str:
    if method not in HttpMethod.values:
        raise invalid(
            DeliveryErrorCode.INVALID_METHOD,
            f"Use one of {', '.join(HttpMethod.values)}.",
            field="httpMethod",
        )
    return method


def _clean_headers(headers: Any) -> dict[str, str]:
    def bad(message: str) -> ValidationError:
        return invalid(DeliveryErrorCode.INVALID_HEADERS, message, field="headers")

    if not isinstance(headers, dict):
        raise bad("Headers must be a JSON object of strings.")
    if len(headers) > MAX_HEADERS:
        raise bad(f"At most {MAX_HEADERS} headers.")
    seen: set[str] = set()
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise bad(f"Invalid header name: {name!r}.")
        if not isinstance(value, str) or "\r" in value or "\n" in value or len(value) > 4096:
            raise bad(f"Header {name} must be a single-line string of at most 4096 characters.")
        lower = name.lower()
        if lower in RESERVED_HEADERS:
            raise bad(f"Header {name} is set by Data Pusher or is hop-by-hop; it cannot be set.")
        if lower in seen:
            raise bad(f"Header {name} is given twice.")
        seen.add(lower)
    return dict(headers)


def _forget_destinations(account_id: object) -> None:
    key = selectors.destinations_cache_key(account_id)
    transaction.on_commit(lambda: cache.delete(key))


def _destination_for_change(actor: Actor, destination_id: str | int, action: Action) -> Destination:
    require_user(actor)
    destination = selectors.destination_get(actor=actor, destination_id=destination_id)
    if destination is None:
        raise NotFound("Destination")
    check(actor, action, destination.account_id)
    return destination


@transaction.atomic
def destination_create(
    *,
    actor: Actor,
    account_id: str | uuid.UUID,
    url: str,
    http_method: str,
    headers: dict[str, str] | None = None,
    is_active: bool = True,
) -> Destination:
    """Add a destination to an account (ADMIN) with a new signing secret.

    Raises ValidationError `invalid_url`, `invalid_method`, `invalid_headers`."""
    user = require_user(actor)
    check(actor, Action.DESTINATION_MANAGE, str(account_id))
    destination = Destination.objects.create(
        account_id=account_id,
        url=_clean_url(url),
        http_method=_clean_method(http_method),
        headers=_clean_headers({} if headers is None else headers),
        is_active=is_active,
        signing_secret=transport.new_signing_secret(),
        created_by=user,
        updated_by=user,
    )
    _forget_destinations(account_id)
    return destination


@transaction.atomic
def destination_update(
    *,
    actor: Actor,
    destination_id: str | int,
    url: str | None = None,
    http_method: str | None = None,
    headers: dict[str, str] | None = None,
    is_active: bool | None = None,
) -> Destination:
    """Change a destination (ADMIN or NORMAL_USER of its account). Deliveries already queued
    use the new settings when they are sent."""
    destination = _destination_for_change(actor, destination_id, Action.DESTINATION_UPDATE)
    if url is not None:
        destination.url = _clean_url(url)
    if http_method is not None:
        destination.http_method = _clean_method(http_method)
    if headers is not None:
        destination.headers = _clean_headers(headers)
    if is_active is not None:
        destination.is_active = is_active
    destination.updated_by = require_user(actor)
    destination.save()
    _forget_destinations(destination.account_id)
    return destination


@transaction.atomic
def destination_delete(*, actor: Actor, destination_id: str | int) -> None:
    """Delete a destination (ADMIN). Its logs stay for the record (destination = null);
    unfinished ones fail with "Destination deleted" when their turn comes."""
    destination = _destination_for_change(actor, destination_id, Action.DESTINATION_MANAGE)
    _forget_destinations(destination.account_id)
    destination.delete()


@transaction.atomic
def destination_rotate_secret(*, actor: Actor, destination_id: str | int) -> Destination:
    """Replace the signing secret (ADMIN); the next request is signed with the new one."""
    destination = _destination_for_change(actor, destination_id, Action.DESTINATION_MANAGE)
    destination.signing_secret = transport.new_signing_secret()
    destination.updated_by = require_user(actor)
    destination.save(update_fields=["signing_secret", "updated_by", "updated_at"])
    return destination


# --- Ingest ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestResult:
    event_id: str
    deliveries: int
    duplicate: bool


def event_ingest(
    *, account_id: uuid.UUID, event_id: str | None, payload: dict[str, Any], size: int
) -> IngestResult:
    """Store an event and one `queued` log per active destination in one transaction;
    enqueue their deliveries and publish `queued` after commit.

    A repeated `event_id` for the account creates nothing and returns the original's result
    with `duplicate=True` (also when a concurrent request wins the unique-constraint race)."""
    for attempt in range(2):
        try:
            return _event_insert(
                account_id=account_id, event_id=event_id, payload=payload, size=size
            )
        except IntegrityError:
            original = (
                Event.objects.filter(account_id=account_id, event_id=event_id).first()
                if event_id is not None
                else None
            )
            if original is not None:
                return IngestResult(original.event_id, original.logs.count(), duplicate=True)
            if attempt:
                raise
            # A destination deleted since it was cached: forget the cache and try again.
            cache.delete(selectors.destinations_cache_key(account_id))
    raise AssertionError("unreachable")


@transaction.atomic
def _event_insert(
    *, account_id: uuid.UUID, event_id: str | None, payload: dict[str, Any], size: int
) -> IngestResult:
    now = timezone.now()
    event = Event.objects.create(
        account_id=account_id,
        event_id=event_id if event_id is not None else uuid.uuid4().hex,
        payload=payload,
        size=size,
        received_at=now,
    )
    logs = DeliveryLog.objects.bulk_create(
        [
            DeliveryLog(
                event=event,
                destination_id=destination_id,
                account_id=account_id,
                status=LogStatus.QUEUED,
                next_attempt_at=now,
                received_timestamp=now,
                updated_at=now,
            )
            for destination_id in selectors.active_destination_ids(account_id)
        ]
    )
    transaction.on_commit(lambda: _dispatch(logs))
    return IngestResult(event.event_id, len(logs), duplicate=False)


def _dispatch(logs: list[DeliveryLog], *, eta: datetime | None = None) -> None:
    """Enqueue deliveries and publish the logs' current status (after commit)."""
    from delivery import tasks  # tasks import this module

    # Publish first: a worker may pick the task up at once and publish `sending` itself.
    live.publish(logs)
    try:
        for log in logs:
            tasks.deliver.schedule((log.pk,), eta=eta) if eta else tasks.deliver(log.pk)
    except Exception:
        # The rows are committed: the sweeper enqueues them once the queue is back.
        logger.exception("Could not enqueue %d deliveries; the sweeper will", len(logs))


# --- Delivery -------------------------------------------------------------------------------


def _lease() -> timedelta:
    """How long a `sending` claim holds before the sweeper may take the log back."""
    return timedelta(
        seconds=settings.DELIVERY_CONNECT_TIMEOUT
        + settings.DELIVERY_READ_TIMEOUT
        + settings.DELIVERY_SWEEP_GRACE_SECONDS
    )


def retry_delay(attempt_in_round: int, retry_after: float | None = None) -> float | None:
    """Seconds until the next try after attempt number `attempt_in_round` (1-based) failed
    transiently, or None when the schedule is used up. Jitter only adds; a Retry-After (capped)
    can only push the try later."""
    schedule = settings.DELIVERY_RETRY_SCHEDULE
    if attempt_in_round > len(schedule):
        return None
    delay = schedule[attempt_in_round - 1]
    delay += delay * settings.DELIVERY_RETRY_JITTER * random.random()  # noqa: S311
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.DELIVERY_RETRY_AFTER_CAP))
    return delay


def log_deliver(*, log_id: int) -> str | None:
    """Send one log once, if it is due and nobody else holds it. Returns the final status of
    this try, or None when the log was not claimable (already done, held, or not yet due) —
    so running the task twice never sends twice — or when the send outlived its lease and the
    sweeper handed the log to another try (whose result stands).

    Commits: the claim (`sending`), then the attempt row with the new status together.
    Publishes both changes; enqueues the next try when the result is `retrying`."""
    now = timezone.now()
    claimed = DeliveryLog.objects.filter(
        pk=log_id,
        status__in=[LogStatus.QUEUED, LogStatus.RETRYING],
        next_attempt_at__lte=now + timedelta(seconds=1),
    ).update(status=LogStatus.SENDING, next_attempt_at=now + _lease(), updated_at=now)
    if not claimed:
        return None
    log = DeliveryLog.objects.select_related("event", "destination").get(pk=log_id)
    live.publish_log_update(log)
    destination = log.destination
    if destination is None or not destination.is_active:
        reason = "Destination deleted." if destination is None else "Destination is inactive."
        return _finish(log, None, LogStatus.FAILED, error=reason)
    outcome = transport.send(
        url=destination.url,
        method=destination.http_method,
        headers=destination.headers,
        payload=log.event.payload,
        webhook_id=log.webhook_id,
        secret=destination.signing_secret,
    )
    if outcome.kind is transport.Kind.SUCCESS:
        return _finish(log, outcome, LogStatus.SUCCESS)
    delay = None
    if outcome.kind is transport.Kind.TRANSIENT:
        delay = retry_delay(log.attempt_count + 1 - log.schedule_offset, outcome.retry_after)
    if delay is None:
        return _finish(log, outcome, LogStatus.FAILED)
    return _finish(log, outcome, LogStatus.RETRYING, delay=delay)


def _finish(
    log: DeliveryLog,
    outcome: transport.Outcome | None,
    status: str,
    *,
    delay: float | None = None,
    error: str = "",
) -> str | None:
    now = timezone.now()
    lease = log.next_attempt_at  # set by our claim: if it changed, the claim is no longer ours
    with transaction.atomic():
        if outcome is not None:
            log.attempt_count += 1
            error = outcome.error_message
        log.status = status
        log.last_error = error
        log.processed_timestamp = now
        log.next_attempt_at = now + timedelta(seconds=delay) if delay is not None else None
        log.updated_at = now
        if outcome is not None:
            log.last_status_code = outcome.status_code
        fields = [
            "status",
            "attempt_count",
            "last_status_code",
            "last_error",
            "processed_timestamp",
            "next_attempt_at",
            "updated_at",
        ]
        held = DeliveryLog.objects.filter(
            pk=log.pk, status=LogStatus.SENDING, next_attempt_at=lease
        ).update(**{name: getattr(log, name) for name in fields})
        if not held:
            # The lease ran out while we were sending: the sweeper gave the log to another try,
            # which owns its state and attempt numbers now.
            logger.warning("Log %s outlived its lease; its %s try is not recorded", log.pk, status)
            return None
        if outcome is not None:
            DeliveryAttempt.objects.create(
                log=log,
                number=log.attempt_count,
                started_at=now - timedelta(milliseconds=outcome.duration_ms),
                duration_ms=outcome.duration_ms,
                status_code=outcome.status_code,
                response_headers=outcome.headers,
                response_body=outcome.body,
                error_class=outcome.error_class,
                error_message=outcome.error_message,
            )
        transaction.on_commit(
            lambda: (
                _dispatch([log], eta=log.next_attempt_at)
                if status == LogStatus.RETRYING
                else live.publish_log_update(log)
            )
        )
    return status


# --- Manual retry, sweeper, retention -------------------------------------------------------


@transaction.atomic
def log_retry(*, actor: Actor, log_id: str | int) -> DeliveryLog:
    """Deliver a log again now (ADMIN), whatever its outcome so far; the retry schedule starts
    over. A log being sent right now raises `not_retryable`."""
    require_user(actor)
    log = selectors.log_get(actor=actor, log_id=log_id)
    if log is None:
        raise NotFound("Log")
    check(actor, Action.LOG_RETRY, log.account_id)
    now = timezone.now()
    updated = (
        DeliveryLog.objects.filter(pk=log.pk)
        .exclude(status=LogStatus.SENDING)
        .update(
            status=LogStatus.QUEUED,
            next_attempt_at=now,
            schedule_offset=log.attempt_count,
            updated_at=now,
        )
    )
    if not updated:
        raise invalid(DeliveryErrorCode.NOT_RETRYABLE, "The log is being sent right now.")
    log.refresh_from_db()
    transaction.on_commit(lambda: _dispatch([log]))
    return log


def logs_retry_failed(*, actor: Actor, filters: selectors.LogFilters | None = None) -> int:
    """Requeue every `failed` log matching `filters` in accounts where the actor is ADMIN.
    Returns how many were requeued."""
    require_user(actor)
    f = replace(filters or selectors.LogFilters(), statuses=[LogStatus.FAILED])
    logs = selectors.apply_log_filters(
        DeliveryLog.objects.filter(account_id__in=account_ids(actor, Action.LOG_RETRY)), f
    )
    ids = list(logs.values_list("pk", flat=True))
    total = 0
    for start in range(0, len(ids), 1000):
        total += _requeue(ids[start : start + 1000], statuses=[LogStatus.FAILED])
    return total


def _requeue(ids: Iterable[int], *, statuses: Iterable[str]) -> int:
    """Move the logs that still have one of `statuses` to `queued`, due now; enqueue them."""
    now = timezone.now()
    with transaction.atomic():
        logs = list(
            DeliveryLog.objects.select_for_update().filter(pk__in=list(ids), status__in=statuses)
        )
        for log in logs:
            log.status = LogStatus.QUEUED
            log.next_attempt_at = now
            log.schedule_offset = log.attempt_count
            log.updated_at = now
        DeliveryLog.objects.bulk_update(
            logs, ["status", "next_attempt_at", "schedule_offset", "updated_at"]
        )
        transaction.on_commit(lambda: _dispatch(logs))
    return len(logs)


def logs_sweep(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Re-enqueue deliveries the queue lost: `queued`/`retrying` logs overdue by more than
    DELIVERY_SWEEP_GRACE_SECONDS, and `sending` logs whose lease ran out (their worker died).
    Returns how many were enqueued. Safe to run anywhere, any number of times."""
    now = now or timezone.now()
    grace = timedelta(seconds=settings.DELIVERY_SWEEP_GRACE_SECONDS)
    stale = list(
        DeliveryLog.objects.filter(status=LogStatus.SENDING, next_attempt_at__lte=now).values_list(
            "pk", flat=True
        )[:limit]
    )
    if stale:
        # Due at once — also when `now` is ahead of the clock — so the task enqueued below can
        # claim them (log_deliver compares with the real time).
        due = min(now, timezone.now())
        DeliveryLog.objects.filter(pk__in=stale, status=LogStatus.SENDING).update(
            status=LogStatus.RETRYING, next_attempt_at=due, updated_at=now
        )
        live.publish(DeliveryLog.objects.filter(pk__in=stale, status=LogStatus.RETRYING))
    with transaction.atomic():
        # Skip rows another sweeper holds, and re-arm the ones taken: a backlog the workers
        # are still working through is re-enqueued at most once per grace period, not on
        # every sweep of every worker process.
        overdue = list(
            DeliveryLog.objects.select_for_update(skip_locked=True)
            .filter(
                status__in=[LogStatus.QUEUED, LogStatus.RETRYING], next_attempt_at__lte=now - grace
            )
            .order_by("next_attempt_at")
            .values_list("pk", flat=True)[:limit]
        )
        DeliveryLog.objects.filter(pk__in=overdue).update(next_attempt_at=min(now, timezone.now()))
    ids = list(dict.fromkeys(stale + overdue))
    from delivery import tasks

    for log_id in ids:
        tasks.deliver(log_id)
    if ids:
        logger.info("Sweeper re-enqueued %d deliveries (%d stale sends)", len(ids), len(stale))
    return len(ids)


def logs_purge(*, now: datetime | None = None, batch: int = 1000) -> dict[str, int]:
    """Delete logs (with their attempts) received more than DELIVERY_LOG_RETENTION_DAYS ago,
    and events older than that with no logs left, in batches of `batch` rows."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.DELIVERY_LOG_RETENTION_DAYS)
    counts = {"logs": 0, "attempts": 0, "events": 0}
    while ids := list(
        DeliveryLog.objects.filter(received_timestamp__lt=cutoff).values_list("pk", flat=True)[
            :batch
        ]
    ):
        with transaction.atomic():
            counts["attempts"] += DeliveryAttempt.objects.filter(log_id__in=ids).delete()[0]
            counts["logs"] += DeliveryLog.objects.filter(pk__in=ids).delete()[0]
    while ids := list(
        Event.objects.filter(received_at__lt=cutoff, logs__isnull=True).values_list(
            "pk", flat=True
        )[:batch]
    ):
        counts["events"] += Event.objects.filter(pk__in=ids).delete()[0]
    return counts

"""Writes of the delivery domain. Background work is scheduled after commit, by id; every
status change of a log is published to live subscribers after commit."""

import json
import logging
import random
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.utils import timezone

from delivery import live, selectors, transport
from delivery.errors import DeliveryErrorCode
from delivery.models import (
    UNSTORABLE_TEXT,
    DeliveryAttempt,
    DeliveryLog,
    Destination,
    Event,
    HttpMethod,
    LogStatus,
)
from identity.errors import NotFound, invalid
from identity.ids import parse_uuid
from identity.models import Account
from identity.permissions import Action, Actor, account_ids, check, require_user
from project.db import Contended, is_contended, retry_contended

logger = logging.getLogger(__name__)

MAX_HEADERS = 50
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# RFC 9110 §5.5 field-value without obs-text: visible ASCII, with spaces and tabs only between
# visible characters (or empty). Bytes above 0x7F are read differently by different receivers,
# and http.client cannot encode anything beyond Latin-1 at all.
_HEADER_VALUE = re.compile(r"^(?:[\x21-\x7e](?:[\x20\x21-\x7e\t]*[\x21-\x7e])?)?\Z")
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
    """The URL as given (stripped), if Django's URLValidator accepts it and the HTTP client
    reads the same host and port from it as the standard library (transport.parse_url: no
    backslash, no `user:password@`). Raises `invalid_url`."""
    url = url.strip()
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise invalid(
            DeliveryErrorCode.INVALID_URL, "Enter a valid http(s) URL.", field="url"
        ) from None
    if len(url) > 2000:
        raise invalid(DeliveryErrorCode.INVALID_URL, "At most 2000 characters.", field="url")
    try:
        target = transport.parse_url(url)
    except transport.InvalidURL as error:
        raise invalid(DeliveryErrorCode.INVALID_URL, str(error), field="url") from None
    if not settings.DELIVERY_ALLOW_PRIVATE_NETWORKS and not _public_host(target):
        raise invalid(
            DeliveryErrorCode.INVALID_URL,
            "Private, loopback and link-local destinations are not allowed.",
            field="url",
        )
    return url


def _public_host(target: transport.Target) -> bool:
    """False when the target's host is, or resolves to, a non-public address (any of its DNS
    answers). A name that does not resolve now is let through: every delivery checks again,
    with the same host and port (the HTTP client's reading of the URL)."""
    name = target.host.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):  # whatever the resolver says
        return False
    try:
        transport.check_host(target.host, target.port)
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
        if not _HEADER_VALUE.match(value):
            raise bad(
                f"Header {name} may hold only visible ASCII characters, with spaces or tabs "
                "between them."
            )
        lower = name.lower()
        if lower in RESERVED_HEADERS:
            raise bad(f"Header {name} is set by Data Pusher or is hop-by-hop; it cannot be set.")
        if lower in seen:
            raise bad(f"Header {name} is given twice.")
        seen.add(lower)
    return dict(headers)


def _forget_destinations(account_id: uuid.UUID) -> None:
    # A UUID, never the caller's spelling: the key must be the one the ingest path reads.
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

    `account_id` may be any spelling of a UUID (upper case, no hyphens, braces, `urn:uuid:`):
    it is parsed once here, so the cache entry dropped is the one the ingest path reads.

    Raises ValidationError `invalid_url`, `invalid_method`, `invalid_headers`; NotFound when
    the account is missing, foreign or `account_id` names no UUID."""
    user = require_user(actor)
    account_pk = parse_uuid(account_id)
    if account_pk is None:  # a malformed id answers like a missing account
        raise NotFound("Account")
    check(actor, Action.DESTINATION_MANAGE, account_pk)
    destination = Destination.objects.create(
        account_id=account_pk,
        url=_clean_url(url),
        http_method=_clean_method(http_method),
        headers=_clean_headers({} if headers is None else headers),
        is_active=is_active,
        signing_secret=transport.new_signing_secret(),
        created_by=user,
        updated_by=user,
    )
    _forget_destinations(account_pk)
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


def destination_delete(*, actor: Actor, destination_id: str | int) -> None:
    """Delete a destination (ADMIN). Its logs stay for the record (destination = null);
    unfinished ones fail with "Destination deleted" when their turn comes.

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
    *,
    account_id: uuid.UUID,
    event_id: str | None,
    payload: dict[str, Any],
    size: int,
    body: bytes | None = None,
) -> IngestResult:
    """Store an event and one `queued` log per active destination in one transaction;
    enqueue their deliveries and publish `queued` after commit.

    `body` is the request body `payload` was parsed from: it is stored as received (as UTF-8
    text; a UTF-16/32 body is transcoded, a BOM dropped) and deliveries send exactly that.
    Without it, deliveries send `payload` re-serialised as compact JSON.

    A repeated `event_id` for the account creates nothing and returns the original's result
    with `duplicate=True` (also when a concurrent request wins the unique-constraint race).

    Raises AccountGone when the account was deleted meanwhile (nothing is stored), and
    Contended when the insert lost a deadlock twice."""
    for attempt in range(2):
        try:
            return _event_insert(
                account_id=account_id,
                event_id=event_id,
                payload=payload,
                size=size,
                body=_body_text(body),
            )
        except IntegrityError:
            original = (
                Event.objects.filter(account_id=account_id, event_id=event_id).first()
                if event_id is not None
                else None
            )
            if original is not None:
                return IngestResult(original.event_id, original.logs.count(), duplicate=True)
            if not Account.objects.filter(pk=account_id).exists():
                raise AccountGone from None
            if attempt:
                raise
            # A destination deleted since it was cached: forget the cache and try again.
            cache.delete(selectors.destinations_cache_key(account_id))
        except OperationalError as error:
            if not is_contended(error):
                raise
            if attempt:
                raise Contended from error
    raise AssertionError("unreachable")


class AccountGone(Exception):
    """The account of an event was deleted while the event was being stored."""


def _body_text(body: bytes | None) -> str:
    """The JSON text of `body` as it will be sent (UTF-8 on the wire): the bytes received when
    they are UTF-8; "" (send the payload re-serialised) when there is none or it does not
    decode — json.loads is more lenient than a strict decode."""
    if not body:
        return ""
    try:
        return body.decode(json.detect_encoding(body))
    except UnicodeDecodeError:
        return ""


@transaction.atomic
def _event_insert(
    *, account_id: uuid.UUID, event_id: str | None, payload: dict[str, Any], size: int, body: str
) -> IngestResult:
    now = timezone.now()
    event = Event.objects.create(
        account_id=account_id,
        event_id=event_id if event_id is not None else uuid.uuid4().hex,
        payload=payload,
        body=body,
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
    sweeper took the log back (it recorded this try as a lost one, outcome unknown).

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
    try:
        outcome = transport.send(
            url=destination.url,
            method=destination.http_method,
            headers=destination.headers,
            payload=log.event.payload,
            body=log.event.body,
            webhook_id=log.webhook_id,
            secret=destination.signing_secret,
        )
    except Exception as error:
        # send() itself does not raise; reading the destination's fields or a bug may. The try
        # is recorded as a transient failure, so the retry schedule bounds it: a log never
        # stays `sending` for the sweeper to send again and again.
        logger.exception("Log %s: the send raised; recorded as a transient failure", log.pk)
        outcome = transport.Outcome.failure(transport.Kind.TRANSIENT, 0, error)
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
    """Record the end of a try: the log's new status and next due time, and (with an outcome)
    its attempt, in one transaction; publish or enqueue the next try after commit. Returns
    `status`, or None when the claim was lost (the sweeper gave the log to another try).

    What the receiver sent is stored with NUL and unpaired surrogates replaced by U+FFFD
    (PostgreSQL text and jsonb cannot hold them). Should the write fail even so, the attempt is
    written again without the answer's headers and body, its error saying why: no try leaves
    the log `sending` without an attempt. A database that cannot be reached raises: the lease
    and the sweeper take the log back."""
    now = timezone.now()
    lease = log.next_attempt_at  # set by our claim: if it changed, the claim is no longer ours
    count = log.attempt_count
    try:
        return _record(
            log, outcome, status, now=now, lease=lease, count=count, delay=delay, error=error
        )
    except (OperationalError, InterfaceError):
        # The database is unreachable, not the answer unstorable: the claim stays until its
        # lease ends and the sweeper hands the log to a new try (at-least-once).
        raise
    except Exception as failure:
        logger.exception("Log %s: its %s try could not be stored as it is", log.pk, status)
        note = f"the answer could not be stored: {type(failure).__name__}"
        if outcome is not None:
            message = f"{outcome.error_message} ({note})" if outcome.error_message else note
            outcome = replace(outcome, headers={}, body="", error_message=message)
        else:
            error = f"{error} ({note})" if error else note
        return _record(
            log, outcome, status, now=now, lease=lease, count=count, delay=delay, error=error
        )


def _storable(text: str, limit: int | None = None) -> str:
    """`text` without what PostgreSQL text/jsonb and UTF-8 cannot hold (NUL, unpaired
    surrogates: each becomes U+FFFD), cut to `limit` characters."""
    return UNSTORABLE_TEXT.sub("\ufffd", text[:limit])


def _record(
    log: DeliveryLog,
    outcome: transport.Outcome | None,
    status: str,
    *,
    now: datetime,
    lease: datetime | None,
    count: int,
    delay: float | None,
    error: str,
) -> str | None:
    with transaction.atomic():
        values: dict[str, Any] = {
            "status": status,
            "attempt_count": count if outcome is None else count + 1,
            "last_status_code": log.last_status_code if outcome is None else outcome.status_code,
            "last_error": _storable(error if outcome is None else outcome.error_message),
            "processed_timestamp": now,
            "next_attempt_at": now + timedelta(seconds=delay) if delay is not None else None,
            "updated_at": now,
        }
        held = DeliveryLog.objects.filter(
            pk=log.pk, status=LogStatus.SENDING, next_attempt_at=lease
        ).update(**values)
        if not held:
            # The lease ran out while we were sending: the sweeper recorded this try as lost
            # (outcome unknown) and gave the log to another try, which owns its state now.
            logger.warning(
                "Log %s outlived its lease; its %s try stays recorded as lost", log.pk, status
            )
            return None
        for name, value in values.items():
            setattr(log, name, value)
        if outcome is not None:
            DeliveryAttempt.objects.create(
                log=log,
                number=log.attempt_count,
                started_at=now - timedelta(milliseconds=outcome.duration_ms),
                duration_ms=outcome.duration_ms,
                status_code=outcome.status_code,
                response_headers={
                    _storable(name): _storable(value) for name, value in outcome.headers.items()
                },
                response_body=_storable(outcome.body),
                error_class=_storable(outcome.error_class, 100),
                error_message=_storable(outcome.error_message),
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


LOST_TRY_CLASS = "OutcomeUnknown"
LOST_TRY_MESSAGE = (
    "The worker stopped before recording this try's outcome "
    "(the request may have reached the destination)."
)


def logs_sweep(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Re-enqueue deliveries the queue lost: `queued`/`retrying` logs overdue by more than
    DELIVERY_SWEEP_GRACE_SECONDS, and `sending` logs whose lease ran out (their worker died or
    could not record the outcome). Returns how many were enqueued. Safe to run anywhere, any
    number of times.

    A lease that ran out is a try whose outcome nobody knows (the request may have reached the
    destination): it is recorded as an attempt (`OutcomeUnknown`, no status code) and counts
    against the retry schedule like a transient failure, so a log whose sends kill the worker
    cannot loop forever. The next try is due at once (the lease already waited); when the lost
    try was the last one the schedule allows, the log fails instead. Publishes the changes."""
    now = now or timezone.now()
    grace = timedelta(seconds=settings.DELIVERY_SWEEP_GRACE_SECONDS)
    expired = list(
        DeliveryLog.objects.filter(status=LogStatus.SENDING, next_attempt_at__lte=now).values_list(
            "pk", flat=True
        )[:limit]
    )
    taken = [log for log_id in expired if (log := _take_back(log_id, now=now)) is not None]
    if taken:
        live.publish(taken)
    stale = [log.pk for log in taken if log.status == LogStatus.RETRYING]
    with transaction.atomic():
        # Skip rows another sweeper holds, and re-arm the ones taken: a backlog the workers
        # are still working through is re-enqueued at most once per grace period, not on
        # every sweep of every worker process.
        overdue = list(
            DeliveryLog.objects.select_for_update(skip_locked=True)
            .filter(
                status__in=[LogStatus.QUEUED, LogStatus.RETRYING], next_attempt_at__lte=now - grace
            )
            .exclude(pk__in=stale)
            .order_by("next_attempt_at")
            .values_list("pk", flat=True)[:limit]
        )
        DeliveryLog.objects.filter(pk__in=overdue).update(next_attempt_at=min(now, timezone.now()))
    ids = list(dict.fromkeys(stale + overdue))
    from delivery import tasks

    for log_id in ids:
        tasks.deliver(log_id)
    if ids or taken:
        logger.info(
            "Sweeper re-enqueued %d deliveries; %d expired leases recorded as lost tries",
            len(ids),
            len(taken),
        )
    return len(ids)


def _take_back(log_id: int, *, now: datetime) -> DeliveryLog | None:
    """Record the lost try of a `sending` log whose lease ended by `now` and move it to
    `retrying` due at once (or `failed` when the schedule is used up), in one transaction.
    Returns the log as written, or None when it is no longer an expired `sending` log (its
    worker recorded the outcome, or another sweeper took it first)."""
    with transaction.atomic():
        log = DeliveryLog.objects.filter(
            pk=log_id, status=LogStatus.SENDING, next_attempt_at__lte=now
        ).first()
        if log is None:
            return None
        lease_end = log.next_attempt_at
        claimed_at = log.updated_at  # set by the claim; nothing else writes a `sending` log
        number = log.attempt_count + 1
        written = timezone.now()
        exhausted = retry_delay(number - log.schedule_offset) is None
        values: dict[str, Any] = {
            "status": LogStatus.FAILED if exhausted else LogStatus.RETRYING,
            "attempt_count": number,
            "last_status_code": None,
            "last_error": LOST_TRY_MESSAGE,
            "processed_timestamp": written,
            # Due at once — also when `now` is ahead of the clock — so the task enqueued
            # afterwards can claim it (log_deliver compares with the real time).
            "next_attempt_at": None if exhausted else min(now, written),
            "updated_at": written,
        }
        # Conditional on the claim we read: a worker that records its outcome meanwhile wins,
        # and the try is then not recorded twice.
        if not DeliveryLog.objects.filter(
            pk=log.pk, status=LogStatus.SENDING, next_attempt_at=lease_end
        ).update(**values):
            return None
        assert lease_end is not None
        DeliveryAttempt.objects.create(
            log=log,
            number=number,
            started_at=claimed_at,
            duration_ms=max(0, int((lease_end - claimed_at).total_seconds() * 1000)),
            status_code=None,
            error_class=LOST_TRY_CLASS,
            error_message=LOST_TRY_MESSAGE,
        )
    for name, value in values.items():
        setattr(log, name, value)
    logger.warning("Log %s: its lease ran out; try %d recorded as lost", log.pk, number)
    return log


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

"""Maintenance: the sweeper (what the queue lost) and retention. Run by delivery/tasks.py on
their own schedule, ahead of any delivery work (tasks.MAINTENANCE_PRIORITY)."""

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from delivery import outbox
from delivery.models import DeliveryAttempt, DeliveryLog, Event, LogStatus, Notice

logger = logging.getLogger(__name__)


@dataclass
class Swept:
    """Logs a sweep found to deliver (expired leases taken back, overdue logs re-armed) and
    the destinations whose lanes must be woken for them."""

    count: int = 0
    destination_ids: list[int] = field(default_factory=list)
    # Accounts with events still waiting for their fan-out past the grace period (a lost wake).
    account_ids: list[str] = field(default_factory=list)


def logs_sweep(*, now: datetime | None = None, limit: int = 1000) -> Swept:
    """Find deliveries the queue lost: `sending` logs whose lease ran out (their worker died
    or could not record the outcome: the lost try is recorded, outbox.take_back) and
    `queued`/`retrying` logs overdue by more than DELIVERY_SWEEP_GRACE_SECONDS (their lane's
    wake was lost), and accounts with events that still wait for their fan-out after the grace
    period (the account's wake was lost). Overdue logs are re-armed (due now), so a backlog
    the lanes are still working through is counted at most once per grace period, not on every
    sweep of every worker process. Waiting logs of a deleted destination fail. Safe to run
    anywhere, any number of times."""
    now = now or timezone.now()
    grace = timedelta(seconds=settings.DELIVERY_SWEEP_GRACE_SECONDS)
    taken = outbox.take_back(now=now, limit=limit)
    retried = [log for log in taken if log.status == LogStatus.RETRYING]
    with transaction.atomic():
        # Skip rows another sweeper holds.
        overdue = list(
            DeliveryLog.objects.select_for_update(skip_locked=True)
            .filter(status__in=outbox.DUE, next_attempt_at__lte=now - grace)
            .exclude(pk__in=[log.pk for log in retried])
            .order_by("next_attempt_at")
            .values_list("pk", "destination_id")[:limit]
        )
        DeliveryLog.objects.filter(
            pk__in=[pk for pk, destination in overdue if destination is not None]
        ).update(next_attempt_at=min(now, timezone.now()))
        orphans = [pk for pk, destination in overdue if destination is None]
        outbox.fail_waiting(DeliveryLog.objects.filter(pk__in=orphans), outbox.DELETED)
    pending = (
        Event.objects.filter(fanned_out_at=None, received_at__lte=now - grace)
        .order_by()
        .values_list("account_id", flat=True)
        .distinct()[:limit]
    )
    swept = Swept(
        account_ids=[str(account) for account in pending],
        count=len(retried) + len(overdue) - len(orphans),
        destination_ids=list(
            dict.fromkeys(
                [log.destination_id for log in retried if log.destination_id is not None]
                + [destination for _, destination in overdue if destination is not None]
            )
        ),
    )
    if swept.count or taken or swept.account_ids:
        logger.info(
            "Sweeper: %d deliveries to resume; %d expired leases recorded as lost tries; "
            "%d accounts with events to fan out",
            swept.count,
            len(taken),
            len(swept.account_ids),
        )
    return swept


def logs_purge(*, now: datetime | None = None, batch: int = 1000) -> dict[str, int]:
    """Delete logs (with their attempts) received more than DELIVERY_LOG_RETENTION_DAYS ago,
    and events older than that with no logs left (not those still waiting for their fan-out),
    in batches of `batch` rows; and destination notices older than that."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.DELIVERY_LOG_RETENTION_DAYS)
    counts = {"logs": 0, "attempts": 0, "events": 0, "notices": 0}
    while ids := list(
        DeliveryLog.objects.filter(received_timestamp__lt=cutoff).values_list("pk", flat=True)[
            :batch
        ]
    ):
        with transaction.atomic():
            counts["attempts"] += DeliveryAttempt.objects.filter(log_id__in=ids).delete()[0]
            counts["logs"] += DeliveryLog.objects.filter(pk__in=ids).delete()[0]
    while ids := list(
        Event.objects.filter(
            received_at__lt=cutoff, logs__isnull=True, fanned_out_at__isnull=False
        ).values_list("pk", flat=True)[:batch]
    ):
        counts["events"] += Event.objects.filter(pk__in=ids).delete()[0]
    while ids := list(Notice.objects.filter(at__lt=cutoff).values_list("pk", flat=True)[:batch]):
        counts["notices"] += Notice.objects.filter(pk__in=ids).delete()[0]
    return counts

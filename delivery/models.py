import re
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from identity.models import Account
from project.crypto import EncryptedJSONField, EncryptedTextField

# What no text column (PostgreSQL text and jsonb) or UTF-8 can hold: NUL and unpaired
# surrogates. Incoming data holding them is refused; receivers' answers get U+FFFD instead.
UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")


class HttpMethod(models.TextChoices):
    GET = "GET"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"


class DisabledCause(models.TextChoices):
    """Why a destination is inactive (empty while it is active)."""

    USER = "user", "Disabled by a person"
    GONE = "gone", "Answered 410 Gone"
    FAILING = "failing", "Failed for too long"


# Causes of an automatic disable: its waiting logs wait for a re-enable (those of a destination
# a person disabled fail).
AUTOMATIC = (DisabledCause.GONE, DisabledCause.FAILING)


class Destination(models.Model):
    """A webhook URL of an account: every event the account receives is sent here."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="destinations")
    url = models.URLField(max_length=2000)
    http_method = models.CharField(max_length=10, choices=HttpMethod.choices)
    # Both encrypted at rest (project.crypto): Python sees the clear values.
    headers = EncryptedJSONField(default=dict, blank=True, help_text="Extra request headers.")
    is_active = models.BooleanField(default=True)
    disabled_cause = models.CharField(
        max_length=10, choices=DisabledCause.choices, blank=True, default=""
    )
    disabled_reason = models.TextField(blank=True, default="")
    disabled_at = models.DateTimeField(null=True, blank=True)
    max_in_flight = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="Concurrent requests to this destination; empty: DELIVERY_MAX_IN_FLIGHT.",
    )
    rate_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Requests per second to this destination; empty: DELIVERY_RATE_LIMIT.",
    )
    signing_secret = EncryptedTextField(help_text="Standard Webhooks `whsec_…`.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["account", "is_active"], name="destination_account_active")]

    def __str__(self) -> str:
        return f"{self.http_method} {self.url}"


class Event(models.Model):
    """One accepted POST to incoming_data, stored once however many destinations it goes to."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="events")
    event_id = models.CharField(max_length=255, help_text="CL-X-EVENT-ID, or generated.")
    payload = models.JSONField(help_text="The body parsed, for queries and filters.")
    # What is sent: PostgreSQL's jsonb reorders keys and drops whitespace and duplicate keys.
    body = models.TextField(
        blank=True,
        default="",
        help_text="The body as received (UTF-8 text); empty for events stored before it was kept.",
    )
    size = models.PositiveIntegerField(help_text="Body size in bytes.")
    received_at = models.DateTimeField(db_index=True)
    # When its logs were created (one per destination active then), by a worker; null while
    # that is pending: the event row is the outbox of its fan-out (delivery/ingest.py). Only
    # the accept path stores an event pending; one created otherwise has its logs already.
    fanned_out_at = models.DateTimeField(null=True, blank=True, default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "event_id"], name="event_account_event_id")
        ]
        indexes = [
            models.Index(
                fields=["account", "id"],
                name="event_pending",
                condition=Q(fanned_out_at__isnull=True),
            )
        ]

    def __str__(self) -> str:
        return self.event_id


class LogStatus(models.TextChoices):
    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SUCCESS = "success"
    FAILED = "failed"


UNFINISHED = (LogStatus.QUEUED, LogStatus.SENDING, LogStatus.RETRYING)


def new_webhook_id() -> str:
    """A Standard Webhooks message id no other log, installation or database shares: 128
    random bits. Not derived from the database id (two installations would collide)."""
    return f"msg_{uuid.uuid4().hex}"


class DeliveryLog(models.Model):
    """The delivery of one event to one destination: the outbox row and its outcome."""

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="logs")
    destination = models.ForeignKey(
        Destination, null=True, on_delete=models.SET_NULL, related_name="logs"
    )
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+")
    # Stable across retries so receivers can de-duplicate; unique everywhere so they never
    # drop a real message. Logs stored before this field keep the `msg_<id>` they were sent with.
    webhook_id = models.CharField(
        max_length=40, unique=True, default=new_webhook_id, editable=False
    )
    status = models.CharField(max_length=10, choices=LogStatus.choices, default=LogStatus.QUEUED)
    attempt_count = models.PositiveIntegerField(default=0)
    # Attempts made before the latest manual retry: the retry schedule restarts from there.
    schedule_offset = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(
        null=True, blank=True, help_text="When the next try is due (for `sending`: lease end)."
    )
    received_timestamp = models.DateTimeField()
    processed_timestamp = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["account", "-received_timestamp", "-id"], name="log_account_received"
            ),
            models.Index(
                fields=["account", "status", "-received_timestamp"], name="log_account_status"
            ),
            models.Index(fields=["destination", "-received_timestamp"], name="log_destination"),
            models.Index(fields=["account", "-processed_timestamp"], name="log_account_processed"),
            models.Index(fields=["account", "last_status_code"], name="log_account_code"),
            models.Index(fields=["received_timestamp"], name="log_received"),
            models.Index(fields=["account", "updated_at", "id"], name="log_account_updated"),
            # A lane's claim: the destination's waiting logs by due time.
            models.Index(
                fields=["destination", "next_attempt_at", "id"],
                name="log_destination_due",
                condition=Q(status__in=["queued", "retrying"]),
            ),
            models.Index(
                fields=["next_attempt_at"],
                name="log_unfinished_due",
                condition=Q(status__in=["queued", "sending", "retrying"]),
            ),
        ]

    def __str__(self) -> str:
        return f"log {self.pk} ({self.status})"


class DeliveryAttempt(models.Model):
    """One HTTP try of a delivery, with what the destination answered."""

    log = models.ForeignKey(DeliveryLog, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_headers = models.JSONField(default=dict, blank=True)
    response_body = models.TextField(blank=True, default="", help_text="Truncated.")
    error_class = models.CharField(max_length=100, blank=True, default="")
    error_message = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["log", "number"]
        constraints = [models.UniqueConstraint(fields=["log", "number"], name="attempt_log_number")]

    def __str__(self) -> str:
        return f"attempt {self.number} of log {self.log_id}"


class NoticeKind(models.TextChoices):
    BREAKER_OPENED = "breaker_opened"
    BREAKER_CLOSED = "breaker_closed"
    DISABLED = "disabled"
    ENABLED = "enabled"


class Notice(models.Model):
    """An operational change of a destination's health: what a dashboard shows as "endpoint X
    was disabled 5 min ago because …"."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="notices")
    destination = models.ForeignKey(
        Destination, null=True, on_delete=models.SET_NULL, related_name="notices"
    )
    kind = models.CharField(max_length=20, choices=NoticeKind.choices)
    at = models.DateTimeField(default=timezone.now)
    detail = models.TextField(blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["account", "-at", "-id"], name="notice_account_at")]

    def __str__(self) -> str:
        return f"{self.kind} of destination {self.destination_id} at {self.at}"

"""The admin of destinations, events, delivery logs and notices.

Destinations are written through delivery.destinations with the admin user as the actor, so an
admin edit checks what a GraphQL one checks (URL and DNS, headers, limits, the actor's role) and
has the same effects (notices, lanes woken, the ingest cache dropped). Events, logs, attempts
and notices are the record of what happened: read-only, with a "Deliver again" action on logs.
The logs table is large: no full count on its change list."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from delivery import destinations, outbox, tasks
from delivery.models import DeliveryAttempt, DeliveryLog, Destination, Event, Notice
from delivery.validators import (
    clean_headers,
    clean_max_in_flight,
    clean_method,
    clean_rate_limit,
    clean_url,
)


def _wake_after_commit(destination_ids: list[int | None]) -> None:
    # The admin saves inside a transaction of its own: a lane woken before it commits would
    # find nothing to send.
    transaction.on_commit(lambda: tasks.wake_destinations(destination_ids))


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewable by staff with the view permission; nothing is added, changed or deleted."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DestinationForm(forms.ModelForm):
    """The checks of destinationCreate/destinationUpdate, as form errors."""

    url = forms.URLField(max_length=2000, assume_scheme="https")

    class Meta:
        model = Destination
        fields = (
            "account",
            "url",
            "http_method",
            "headers",
            "is_active",
            "max_in_flight",
            "rate_limit",
        )

    def _clean(self, name: str, clean: Any) -> Any:
        try:
            return clean(self.cleaned_data[name])
        except ValidationError as error:
            raise ValidationError(error.messages, code=getattr(error, "code", None)) from None

    def clean_url(self) -> str:
        return self._clean("url", clean_url)

    def clean_http_method(self) -> str:
        return self._clean("http_method", clean_method)

    def clean_headers(self) -> dict[str, str]:
        return self._clean("headers", clean_headers)

    def clean_max_in_flight(self) -> int | None:
        return self._clean("max_in_flight", lambda value: clean_max_in_flight(value or 0))

    def clean_rate_limit(self) -> int | None:
        return self._clean("rate_limit", lambda value: clean_rate_limit(value or 0))


@admin.register(Destination)
class DestinationAdmin(admin.ModelAdmin):
    form = DestinationForm
    list_display = (
        "url",
        "account",
        "http_method",
        "is_active",
        "disabled_cause",
        "max_in_flight",
        "rate_limit",
        "updated_at",
    )
    list_filter = ("is_active", "disabled_cause", "http_method")
    search_fields = ("url", "account__name", "=account__id")
    list_select_related = ("account",)
    raw_id_fields = ("account",)
    readonly_fields = (
        "disabled_cause",
        "disabled_reason",
        "disabled_at",
        "created_by",
        "updated_by",
        "created_at",
        "updated_at",
    )
    # The signing secret is shown nowhere here: destinationRotateSecret replaces it.

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # A destination never moves between accounts (its logs and lanes belong to one).
        return ("account", *self.readonly_fields) if obj is not None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        values = {
            "url": obj.url,
            "http_method": obj.http_method,
            "headers": obj.headers,
            "is_active": obj.is_active,
            "max_in_flight": obj.max_in_flight or 0,
            "rate_limit": obj.rate_limit or 0,
        }
        if change:
            saved = destinations.destination_update(
                actor=request.user, destination_id=obj.pk, **values
            )
            if "is_active" in form.changed_data:  # logs that waited for a re-enable
                _wake_after_commit([saved.pk])
        else:
            saved = destinations.destination_create(
                actor=request.user, account_id=obj.account_id, **values
            )
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        destinations.destination_delete(actor=request.user, destination_id=obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Destination]) -> None:
        for pk in queryset.values_list("pk", flat=True):
            destinations.destination_delete(actor=request.user, destination_id=pk)


class LogInline(ReadOnlyInline):
    model = DeliveryLog
    fields = ("destination", "status", "attempt_count", "last_status_code", "processed_timestamp")
    readonly_fields = fields


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("event_id", "account", "received_at", "size")
    search_fields = ("=event_id", "account__name", "=account__id")
    list_select_related = ("account",)
    date_hierarchy = "received_at"
    show_full_result_count = False
    exclude = ("body",)
    inlines = [LogInline]


class AttemptInline(ReadOnlyInline):
    model = DeliveryAttempt
    fields = (
        "number",
        "started_at",
        "duration_ms",
        "status_code",
        "error_class",
        "error_message",
        "response_body",
    )
    readonly_fields = fields
    show_change_link = False


@admin.register(DeliveryLog)
class DeliveryLogAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "event_id",
        "destination",
        "status",
        "attempt_count",
        "last_status_code",
        "received_timestamp",
        "processed_timestamp",
    )
    list_filter = ("status", "received_timestamp", "last_status_code")
    search_fields = ("=webhook_id", "=event__event_id", "destination__url", "=account__id")
    list_select_related = ("event", "destination")
    show_full_result_count = False
    inlines = [AttemptInline]
    actions = ["deliver_again"]

    @admin.display(description="Event")
    def event_id(self, log: DeliveryLog) -> str:
        return log.event.event_id

    @admin.action(description="Deliver the selected logs again")
    def deliver_again(self, request: HttpRequest, queryset: QuerySet[DeliveryLog]) -> None:
        done, refused = [], []
        for log in queryset.select_related(None).only("pk"):
            try:
                done.append(outbox.log_retry(actor=request.user, log_id=log.pk))
            except (ObjectDoesNotExist, PermissionDenied, ValidationError) as error:
                refused.append(f"{log.pk}: {' '.join(getattr(error, 'messages', [str(error)]))}")
        _wake_after_commit([log.destination_id for log in done])
        if done:
            self.message_user(request, f"{len(done)} queued again.", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not queued: " + "; ".join(refused), messages.WARNING)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Actions need it on the change list; the form stays read-only (no editable fields).
        return obj is None and super(ReadOnlyAdmin, self).has_change_permission(request)


@admin.register(Notice)
class NoticeAdmin(ReadOnlyAdmin):
    list_display = ("at", "kind", "account", "destination", "detail")
    list_filter = ("kind",)
    search_fields = ("account__name", "=account__id", "destination__url")
    list_select_related = ("account", "destination")
    show_full_result_count = False

"""Plain factory functions: explicit, typed, no magic."""

import itertools
from datetime import datetime

from django.utils import timezone

from delivery.models import DeliveryAttempt, DeliveryLog, Destination, Event
from delivery.transport import new_signing_secret
from identity import secrets
from identity.models import Account, Membership, Role, User

_seq = itertools.count(1)
PASSWORD = "correct horse battery 9"


def make_user(email: str | None = None, **extra: object) -> User:
    return User.objects.create_user(email or f"user{next(_seq)}@example.com", PASSWORD, **extra)


def make_account(admin: User | None = None, name: str | None = None) -> tuple[Account, str]:
    """An account (with `admin` as ADMIN when given) and its raw app secret."""
    raw = secrets.new_secret(secrets.APP_SECRET_PREFIX)
    account = Account.objects.create(
        name=name or f"Account {next(_seq)}",
        secret_hash=secrets.digest(raw),
        secret_prefix=secrets.visible_part(raw),
        created_by=admin,
        updated_by=admin,
    )
    if admin is not None:
        Membership.objects.create(user=admin, account=account, role=Role.ADMIN)
    return account, raw


def add_member(account: Account, user: User, role: str = Role.NORMAL_USER) -> Membership:
    return Membership.objects.create(account=account, user=user, role=role)


# --- Delivery -------------------------------------------------------------------------------
# (imported here to keep this section self-contained)


def make_destination(
    account: Account,
    url: str | None = None,
    *,
    http_method: str = "POST",
    headers: dict[str, str] | None = None,
    is_active: bool = True,
) -> Destination:
    """A destination on the discard port of loopback (nothing listens there)."""
    n = next(_seq)
    return Destination.objects.create(
        account=account,
        url=url or f"http://127.0.0.1:9/hook{n}",
        http_method=http_method,
        headers=headers or {},
        is_active=is_active,
        signing_secret=new_signing_secret(),
    )


def make_event(
    account: Account,
    event_id: str | None = None,
    payload: dict[str, object] | None = None,
    received_at: datetime | None = None,
) -> Event:
    payload = {"n": next(_seq)} if payload is None else payload
    return Event.objects.create(
        account=account,
        event_id=event_id or f"evt-{next(_seq)}",
        payload=payload,
        size=len(str(payload)),
        received_at=received_at or timezone.now(),
    )


def make_log(
    event: Event, destination: Destination | None, status: str = "queued", **extra: object
) -> DeliveryLog:
    """A delivery log of `event` to `destination`; `extra` sets any other column."""
    extra.setdefault("received_timestamp", event.received_at)
    return DeliveryLog.objects.create(
        event=event, destination=destination, account_id=event.account_id, status=status, **extra
    )


def make_attempt(log: DeliveryLog, number: int, **extra: object) -> DeliveryAttempt:
    extra.setdefault("started_at", timezone.now())
    extra.setdefault("duration_ms", 12)
    return DeliveryAttempt.objects.create(log=log, number=number, **extra)

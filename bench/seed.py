"""Rows the benchmarks need, created with the ORM in the bench process (never through tests/)."""

import itertools
import uuid
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from bench.common import BODY, PAYLOAD
from delivery import transport
from delivery.models import DeliveryLog, Destination, Event, LogStatus
from identity import secrets
from identity.auth import token_issue
from identity.models import Account, Membership, Role, User

_seq = itertools.count(1)


@dataclass
class Tenant:
    account: Account
    app_secret: str  # the CL-X-TOKEN
    destinations: list[Destination]
    user: User  # ADMIN of the account
    token: str  # the user's bearer token


def tenant(destinations: int, url: str, *, name: str = "") -> Tenant:
    """An account with an ADMIN user (and token) and `destinations` active POST destinations
    at `url` (each with its own path)."""
    n = next(_seq)
    raw = secrets.new_secret(secrets.APP_SECRET_PREFIX)
    account = Account.objects.create(
        name=name or f"Bench {n}",
        secret_hash=secrets.digest(raw),
        secret_prefix=secrets.visible_part(raw),
    )
    user = User.objects.create_user(
        f"bench{n}-{uuid.uuid4().hex[:8]}@example.com", None
    )  # unusable password
    Membership.objects.create(user=user, account=account, role=Role.ADMIN)
    dests = [
        Destination.objects.create(
            account=account,
            url=f"{url}/hook/{n}/{i}",
            http_method="POST",
            headers={"X-Bench": "1"},
            signing_secret=transport.new_signing_secret(),
        )
        for i in range(destinations)
    ]
    return Tenant(account, raw, dests, user, token_issue(user=user))


def queued_logs(t: Tenant, count: int, *, batch: int = 5000) -> list[int]:
    """`count` queued logs spread over the tenant's destinations (one event per destination
    round), created with bulk_create; returns their ids in creation order."""
    per_event = len(t.destinations)
    ids: list[int] = []
    events_needed = -(-count // per_event)
    made = 0
    for start in range(0, events_needed, max(1, batch // per_event)):
        now = timezone.now()
        n_events = min(max(1, batch // per_event), events_needed - start)
        with transaction.atomic():
            events = Event.objects.bulk_create(
                Event(
                    account=t.account,
                    event_id=f"seed-{next(_seq)}",
                    payload=PAYLOAD,
                    body=BODY,
                    size=len(BODY),
                    received_at=now,
                )
                for _ in range(n_events)
            )
            logs = []
            for event in events:
                for destination in t.destinations:
                    if made == count:
                        break
                    logs.append(
                        DeliveryLog(
                            event=event,
                            destination=destination,
                            account=t.account,
                            status=LogStatus.QUEUED,
                            next_attempt_at=now,
                            received_timestamp=now,
                            updated_at=now,
                        )
                    )
                    made += 1
            ids += [log.pk for log in DeliveryLog.objects.bulk_create(logs)]
    return ids


def enqueue(t: Tenant, log_ids: list[int]) -> str:
    """Queue the work for the tenant's seeded `queued` logs as the accept path does after its
    commit (tasks.after_accept): ONE `wake_account` task, which starts a lane per destination;
    the lanes claim the logs in batches. Returns how, for the notes."""
    from delivery import tasks

    tasks.wake_account(str(t.account.pk))
    return f"one tasks.wake_account(account_id) for {len(log_ids):,} logs (lanes claim them)"

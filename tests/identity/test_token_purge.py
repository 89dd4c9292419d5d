"""Expired user tokens are deleted by the daily maintenance task (identity.auth.tokens_purge);
live ones keep working."""

from datetime import timedelta

from django.utils import timezone

from delivery import tasks
from identity import secrets
from identity.auth import token_issue, token_user, tokens_purge
from identity.models import AuthToken, User
from tests.factories import make_user


def expire(raw: str, *, ago: timedelta) -> None:
    AuthToken.objects.filter(key_hash=secrets.digest(raw)).update(expires_at=timezone.now() - ago)


def test_tokens_purge_deletes_expired_tokens_and_keeps_live_ones(db: None) -> None:
    ada, bob = make_user(), make_user()
    live = [token_issue(user=ada), token_issue(user=bob)]
    expired = [token_issue(user=ada), token_issue(user=bob), token_issue(user=bob)]
    for n, raw in enumerate(expired):
        expire(raw, ago=timedelta(days=n, seconds=1))

    deleted = tokens_purge(batch=2)

    assert deleted == 3
    assert set(AuthToken.objects.values_list("key_hash", flat=True)) == {
        secrets.digest(raw) for raw in live
    }
    assert [token_user(raw) for raw in live] == [ada, bob]
    assert tokens_purge() == 0


def test_tokens_purge_counts_a_token_expiring_at_now_as_expired(db: None) -> None:
    user = make_user()
    now = timezone.now()
    at_now, later = token_issue(user=user), token_issue(user=user)
    AuthToken.objects.filter(key_hash=secrets.digest(at_now)).update(expires_at=now)
    AuthToken.objects.filter(key_hash=secrets.digest(later)).update(
        expires_at=now + timedelta(microseconds=1)
    )

    assert tokens_purge(now=now) == 1
    assert list(AuthToken.objects.values_list("key_hash", flat=True)) == [secrets.digest(later)]


def test_the_daily_purge_task_removes_expired_tokens(db: None) -> None:
    user: User = make_user()
    live, expired = token_issue(user=user), token_issue(user=user)
    expire(expired, ago=timedelta(seconds=1))

    tasks.purge()  # Huey immediate mode: runs inline

    assert list(AuthToken.objects.values_list("key_hash", flat=True)) == [secrets.digest(live)]

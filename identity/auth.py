"""User bearer tokens: issue, resolve, revoke, purge once expired. Only digests are stored."""

from collections.abc import Collection
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from identity import secrets
from identity.models import AuthToken, User

# Writing last_used_at on every request would cost a commit per API call; a coarse value is
# enough to show which tokens are in use.
_LAST_USED_RESOLUTION = timedelta(minutes=5)


def token_from_header(value: str | None) -> str | None:
    """The raw token from an `Authorization: Bearer <t>` (or `Token <t>`) header value."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() not in ("bearer", "token") or not token.strip():
        return None
    return token.strip()


def token_issue(*, user: User) -> str:
    """Create a token for `user` and return its raw value (the only time it exists in clear)."""
    raw = secrets.new_secret(secrets.USER_TOKEN_PREFIX)
    AuthToken.objects.create(
        user=user,
        key_hash=secrets.digest(raw),
        prefix=secrets.visible_part(raw),
        expires_at=timezone.now() + timedelta(days=settings.AUTH_TOKEN_TTL_DAYS),
    )
    return raw


def token_user(raw: str | None) -> User | None:
    """The active user owning an unexpired token, or None."""
    if not raw:
        return None
    digest = secrets.digest(raw)
    return token_users([digest])[digest]


def token_users(digests: Collection[str]) -> dict[str, User | None]:
    """`token_user` of many tokens at once, by their digests (secrets.digest): one query for
    the lot (and one to mark the ones not used for a while)."""
    now = timezone.now()
    tokens = AuthToken.objects.select_related("user").filter(
        key_hash__in=list(digests), expires_at__gt=now
    )
    found = {token.key_hash: token for token in tokens}
    stale = [
        t.pk
        for t in found.values()
        if t.last_used_at is None or now - t.last_used_at > _LAST_USED_RESOLUTION
    ]
    if stale:
        AuthToken.objects.filter(pk__in=stale).update(last_used_at=now)
    users: dict[str, User | None] = {}
    for digest in digests:
        token = found.get(digest)
        users[digest] = token.user if token is not None and token.user.is_active else None
    return users


def token_revoke(raw: str) -> int:
    """Delete the token; returns how many rows went (0 or 1)."""
    deleted, _ = AuthToken.objects.filter(key_hash=secrets.digest(raw)).delete()
    return deleted


def tokens_purge(*, now: datetime | None = None, batch: int = 1000) -> int:
    """Delete every token expired at `now` (default: the current time), `batch` rows per
    statement so that a large backlog never holds long locks; returns how many went."""
    now = now or timezone.now()
    deleted = 0
    while pks := list(
        AuthToken.objects.filter(expires_at__lte=now).values_list("pk", flat=True)[:batch]
    ):
        deleted += AuthToken.objects.filter(pk__in=pks).delete()[0]
    return deleted

"""The one throttle in front of every password check (GraphQL `login`, `userUpdate` with
`currentPassword`, the admin site's login).

Failures are counted in moving windows (the `limits` library: each failure expires on its own,
so no window boundary lets twice the limit through), in Redis when `REDIS_URL` is set (shared by
every process) and in memory otherwise (embedded mode runs one process). Three limits, all
settings; the policy slows a guesser long before the owner notices:

- per (email, client address): LOGIN_FAILURES_PER_EMAIL_ADDRESS, "5/15minute". This is what
  stops a guesser; the owner at another address is not affected, and a successful check clears
  the pair's counter, so the owner's own typos do not add up.
- per client address over all emails: LOGIN_FAILURES_PER_ADDRESS, "30/15minute" (one address
  spraying many emails).
- per email over all addresses: LOGIN_FAILURES_PER_EMAIL, "100/hour", a cap on distributed
  guessing, set high enough that one address (at most 20 failures an hour on one email) cannot
  lock the owner out: that takes 20 addresses at once, or 5 for a whole hour.

Over a limit, the check answers `throttled` without looking at the password.
"""

import math
import time
from collections.abc import Mapping
from functools import cache
from typing import Any

import limits
from django.conf import settings
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter

from identity import secrets
from identity.errors import ErrorCode, invalid
from identity.models import User


@cache
def _storage(redis_url: str, key_prefix: str) -> Storage:
    if not redis_url:
        return MemoryStorage()
    return RedisStorage(redis_url, key_prefix=key_prefix)


def _limiter() -> MovingWindowRateLimiter:
    # Keys start with the cache's key prefix, so a test run (or another deployment sharing the
    # Redis database) keeps counters of its own.
    prefix = settings.CACHES["default"].get("KEY_PREFIX", "")
    return MovingWindowRateLimiter(
        _storage(settings.REDIS_URL, f"{prefix}:throttle" if prefix else "throttle")
    )


def _limits(email: str, client_address: str) -> list[tuple[limits.RateLimitItem, str, str]]:
    """(limit, scope, subject digest) for the three counters a failure adds to."""
    return [
        (
            limits.parse(settings.LOGIN_FAILURES_PER_EMAIL_ADDRESS),
            "email_address",
            secrets.digest(f"{email}\0{client_address}"),
        ),
        (
            limits.parse(settings.LOGIN_FAILURES_PER_ADDRESS),
            "address",
            secrets.digest(client_address),
        ),
        (limits.parse(settings.LOGIN_FAILURES_PER_EMAIL), "email", secrets.digest(email)),
    ]


def password_check(*, user: User | None, email: str, password: str, client_address: str) -> bool:
    """Whether `password` is the password of `user` (None: no such active user, which spends
    the time of a real check and returns False). `email` is what the caller gave, counted
    case-insensitively.

    A wrong password counts one failure on each limit; a right one clears the failures of this
    email at this address. Raises ValidationError `throttled` ("Try again in N seconds.")
    without checking the password when any limit is used up.
    """
    email = email.strip().lower()
    limiter = _limiter()
    pair, *caps = _limits(email, client_address)
    full = [counter for counter in caps if not limiter.test(*counter)]
    # The pair's failure is taken before the check, atomically in both storages, so concurrent
    # guesses cannot all pass the test first; a right password clears it again.
    if not full and not limiter.hit(*pair):
        full = [pair]
    if full:
        reset = max(limiter.get_window_stats(*counter).reset_time for counter in full)
        seconds = max(1, math.ceil(reset - time.time()))
        raise invalid(
            ErrorCode.THROTTLED, f"Too many failed logins. Try again in {seconds} seconds."
        )
    if user is None:
        # Spend the same time as a real check so response time does not reveal emails.
        User().set_password(password)
        ok = False
    else:
        ok = user.check_password(password)
    if ok:
        limiter.clear(*pair)
    else:
        for counter in caps:
            limiter.hit(*counter)
    return ok


def reset() -> None:
    """Forget every failure (tests: each starts with no failures counted)."""
    _limiter().storage.reset()


def address_from_meta(meta: Mapping[str, Any]) -> str:
    """The caller's address from a request's META. Behind NUM_PROXIES reverse proxies it is the
    address the outermost trusted proxy saw, taken from the right of X-Forwarded-For (entries
    further left are whatever the client chose to send)."""
    proxies = settings.NUM_PROXIES
    forwarded = [a.strip() for a in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if a.strip()]
    if proxies and forwarded:
        return forwarded[-min(proxies, len(forwarded))]
    return str(meta.get("REMOTE_ADDR", ""))

"""Fixed-window failure counters in Django's cache (Redis when configured: shared by all
processes; local memory in embedded mode, where there is one process)."""

import time

from django.core.cache import cache

from identity import secrets


def _key(scope: str, subject: str, window: int) -> str:
    return f"throttle:{scope}:{secrets.digest(subject)[:32]}:{int(time.time() // window)}"


def failures(scope: str, subject: str, *, window: int) -> int:
    return int(cache.get(_key(scope, subject, window), 0))


def record_failure(scope: str, subject: str, *, window: int) -> None:
    key = _key(scope, subject, window)
    cache.add(key, 0, timeout=window)
    try:
        cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=window)


def retry_after(window: int) -> int:
    """Seconds until the current window ends."""
    return window - int(time.time()) % window

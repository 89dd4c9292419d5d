"""Per-destination request rates (`Destination.rate_limit`, else DELIVERY_RATE_LIMIT), shared
by every worker process: a GCRA (generic cell rate algorithm) whose one value per destination,
the theoretical arrival time of its next request, lives in Redis (the process's own memory in
embedded mode). A lane reserves the slots of several requests at once (those due within a
horizon: one round trip per batch at high rates), spaced 1/rate apart; a reservation that
comes late keeps the next slot where it was (up to one spacing), so the rate holds on
average, with bursts of at most two after a pause. The clock is Redis's, so workers on
several machines agree."""

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from redis.exceptions import RedisError

from delivery.models import Destination
from project.cache import redis_client

logger = logging.getLogger(__name__)

# KEYS[1]: the destination's next arrival time; ARGV: the spacing (seconds), how many slots
# are wanted, the horizon (seconds). Returns how many were granted and, as text, when the
# first of them is due relative to now (<= 0: at once; with none granted, when one would be).
_RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local spacing, wanted, horizon = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local base = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now - spacing)
local granted = 0
while granted < wanted and base + granted * spacing <= now + horizon do
    granted = granted + 1
end
if granted > 0 then
    local tat = base + granted * spacing
    redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
end
return {granted, tostring(base - now)}
"""


@dataclass(frozen=True)
class Grant:
    """`count` request slots, the i-th due `first + i * spacing` seconds after the moment
    of the reservation (at once when that is <= 0); none: the next is due in `first`."""

    count: int
    first: float
    spacing: float


def rate_limit(destination: Destination) -> float:
    """Requests per second allowed to the destination (its own limit, else its account's
    default as engine.destination_copies loads it, else DELIVERY_RATE_LIMIT); 0: none."""
    return float(
        destination.rate_limit
        or getattr(destination, "account_rate_limit", None)
        or settings.DELIVERY_RATE_LIMIT
    )


_local_lock = threading.Lock()  # embedded mode: one process, its local-memory cache
_scripts: dict[int, Any] = {}


def reserve(
    destination_id: int,
    rate: float,
    wanted: int,
    horizon: float,
    *,
    renew: tuple[str, int] | None = None,
) -> Grant:
    """Reserve up to `wanted` of the destination's next request slots at `rate` per second,
    those due within `horizon` seconds; `renew` (a cache key and seconds, the lane's slot) has
    its timeout renewed in the same round trip. Without Redis, every slot is granted at the
    rate from now (the lane alone keeps the rate)."""
    spacing = 1.0 / rate
    key = f"rate:{destination_id}"
    client = redis_client(cache)
    if client is None:
        if renew is not None:
            cache.touch(*renew)
        with _local_lock:
            now = time.time()
            base = max(cache.get(key, 0.0), now - spacing)
            granted = 0
            while granted < wanted and base + granted * spacing <= now + horizon:
                granted += 1
            if granted:
                tat = base + granted * spacing
                cache.set(key, tat, timeout=int(tat - now) + 2)
            return Grant(granted, base - now, spacing)
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(_RESERVE_LUA)
    try:
        pipe = client.pipeline(transaction=False)
        if renew is not None:
            pipe.expire(cache.make_key(renew[0]), renew[1])
        script(keys=[cache.make_key(key)], args=[spacing, wanted, horizon], client=pipe)
        granted, first = pipe.execute()[-1]
    except RedisError:  # no shared count: this lane keeps the rate on its own
        logger.warning("Destination %s: rate slots not reserved (Redis)", destination_id)
        return Grant(wanted, 0.0, spacing)
    return Grant(int(granted), float(first), spacing)

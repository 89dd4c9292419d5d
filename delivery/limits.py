"""Per-destination request rates (`Destination.rate_limit`, else DELIVERY_RATE_LIMIT), shared
by every worker process: a GCRA (generic cell rate algorithm) whose one value per destination,
the theoretical arrival time of the next request, lives in Redis (the process's own memory in
embedded mode) and is read and moved in one round trip per request. Requests are spaced
1/rate apart; a request that comes late keeps the next slot where it was (up to one spacing),
so the rate is kept on average, with bursts of at most two after a pause. The clock is
Redis's, so workers on several machines agree."""

import threading
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache

from delivery.models import Destination
from project.cache import redis_client

# KEYS[1]: the destination's arrival time; ARGV[1]: the spacing (seconds). Returns the seconds
# to wait (as text), "0" when the request may go now (then it is counted).
_RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local spacing = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat > now then return tostring(tat - now) end
tat = math.max(tat, now - spacing) + spacing
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return '0'
"""


def rate_limit(destination: Destination) -> float:
    """Requests per second allowed to the destination; 0: no limit."""
    return float(destination.rate_limit or settings.DELIVERY_RATE_LIMIT)


_local_lock = threading.Lock()  # embedded mode: one process, its local-memory cache
_scripts: dict[int, Any] = {}


def reserve(destination_id: int, rate: float) -> float:
    """Take the destination's next request slot at `rate` per second: 0.0 when a request may
    go now (it is counted), else the seconds until one may (nothing counted)."""
    spacing = 1.0 / rate
    key = f"rate:{destination_id}"
    client = redis_client(cache)
    if client is None:
        with _local_lock:
            now = time.time()
            due = cache.get(key, 0.0)
            if due > now:
                return float(due - now)
            cache.set(key, max(due, now - spacing) + spacing, timeout=int(spacing) + 2)
            return 0.0
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(_RESERVE_LUA)
    return float(script(keys=[cache.make_key(key)], args=[spacing]))

"""Destination health: a circuit breaker per destination, automatic disabling, and the figures
`Destination.health` shows, kept incrementally (counters per time bucket, never a scan of the
logs) in the cache: Redis in production, shared by every worker process; the process's own
memory in embedded mode (one process).

One record per destination (a Redis hash), written once per flushed group of results:

- tries and transient failures per minute for the breaker's window (dropped when it closes),
  tries and all failures per minute for the last hour's figures,
  tries and failures per hour (the last 24 hours), a latency histogram per 5 minutes (the last
  hour's p50 and p95); the last success, failure and error; failures since the last success and
  since when there has been no success;
- the breaker, changed by compare-and-set on its version:

      closed --(≥ FAILURE_PERCENT of ≥ MIN_TRIES tries in the window failed transiently)--> open
      open --(its cool-down ends)--> half-open: PROBES deliveries may go, one token each
      half-open --(a probe did not fail transiently)--> closed
      half-open --(a probe failed transiently)--> open again, cool-down doubled (≤ the maximum)

While the breaker is open a lane sends nothing: the destination's due logs get the probe time
as their next try (outbox.defer) without spending a try, and keep their order. Permanent
failures (4xx other than 408/429) never trip it: the receiver is up and refuses. A 410 Gone, or
only failures for DESTINATION_DISABLE_AFTER, disables the destination (destinations.py).
Transitions are recorded as notices (models.Notice)."""

import logging
import math
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone
from redis.exceptions import RedisError

from delivery import live, policy, selectors, transport
from delivery.models import DeliveryLog, Destination, DisabledCause, Notice, NoticeKind
from identity.models import Account
from project.cache import redis_client

logger = logging.getLogger(__name__)

# Upper edges (ms) of the latency histogram's bins; the last bin holds everything above.
LATENCY_BINS_MS = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000)
RECORD_SECONDS = 25 * 3600  # a record outlives its last write by this long (the 24 h figures)
BACKLOG_CAP = 10_000  # `backlog` counts the waiting logs up to this many


class State(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    OPEN = "open"
    HALF_OPEN = "half_open"
    DISABLED = "disabled"


# Live figures (destinationUpdates): at most one message per destination per this long.
PUBLISH_SECONDS = 1.0
# How long a 429 without Retry-After holds a destination's lane.
THROTTLE_SECONDS = 1.0

# A closed breaker's destination is DEGRADED when the window's failures reach this share (or
# its latest try failed).
DEGRADED_PERCENT = 10


# --- The store: one hash per destination ------------------------------------------------------


class _Store(Protocol):
    def update(
        self,
        key: str,
        *,
        incr: dict[str, int],
        put: dict[str, str],
        put_new: dict[str, str],
        prune: dict[str, int],
        read: list[str],
        stamp: tuple[str, float, float] | None = None,
    ) -> tuple[list[str | None], bool]:
        """Atomically: add `incr`, set `put`, set `put_new` where unset or empty, drop bucket fields
        `kind:slot…` whose slot is below `prune[kind]`; with `stamp` (field, now, gap), set the
        field to `now` when it holds a time at least `gap` seconds older (or none). Returns
        the `read` fields (as they were before the stamp) and whether the stamp was set."""

    def replace(self, key: str, *, version: str, put: dict[str, str], drop: list[str]) -> bool:
        """Set `put` and drop `drop` if the record's version is still `version`; then the
        version moves on. False when another process changed it first."""

    def read(self, keys: list[str]) -> list[dict[str, str]]: ...

    def clear(self, key: str) -> None: ...


_UPDATE_LUA = """
local key, i = KEYS[1], 1
local function pairs_of(apply)
    local n = tonumber(ARGV[i]); i = i + 1
    for _ = 1, n do apply(ARGV[i], ARGV[i + 1]); i = i + 2 end
end
pairs_of(function(f, v) redis.call('HINCRBY', key, f, v) end)
pairs_of(function(f, v) redis.call('HSET', key, f, v) end)
pairs_of(function(f, v)
    local current = redis.call('HGET', key, f)
    if not current or current == '' then redis.call('HSET', key, f, v) end
end)
local bounds, any = {}, false
pairs_of(function(k, v) bounds[k] = tonumber(v); any = true end)
if any then
    for _, f in ipairs(redis.call('HKEYS', key)) do
        local kind, slot = string.match(f, '^(%a+):(%d+)')
        if kind and bounds[kind] and tonumber(slot) < bounds[kind] then
            redis.call('HDEL', key, f)
        end
    end
end
redis.call('EXPIRE', key, ARGV[i])
local stamp, now, gap = ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
i = i + 4
local read = {}
if i <= #ARGV then read = redis.call('HMGET', key, unpack(ARGV, i)) end
local stamped = 0
if stamp ~= '' and now - (tonumber(redis.call('HGET', key, stamp) or '') or 0) >= gap then
    redis.call('HSET', key, stamp, ARGV[i - 2])
    stamped = 1
end
return {stamped, read}
"""

_REPLACE_LUA = """
local key = KEYS[1]
if (redis.call('HGET', key, 'ver') or '') ~= ARGV[1] then return 0 end
local n, i = tonumber(ARGV[2]), 3
for _ = 1, n do redis.call('HSET', key, ARGV[i], ARGV[i + 1]); i = i + 2 end
for j = i, #ARGV - 1 do redis.call('HDEL', key, ARGV[j]) end
redis.call('HINCRBY', key, 'ver', 1)
redis.call('EXPIRE', key, ARGV[#ARGV])
return 1
"""


def _flat(values: dict[str, Any]) -> list[Any]:
    return [len(values), *(item for pair in values.items() for item in pair)]


class _RedisStore:
    def __init__(self, client: Any) -> None:
        self.client = client
        self._update = client.register_script(_UPDATE_LUA)
        self._replace = client.register_script(_REPLACE_LUA)

    def update(
        self,
        key: str,
        *,
        incr: dict[str, int],
        put: dict[str, str],
        put_new: dict[str, str],
        prune: dict[str, int],
        read: list[str],
        stamp: tuple[str, float, float] | None = None,
    ) -> tuple[list[str | None], bool]:
        field, now, gap = stamp or ("", 0.0, 0.0)
        args = [*_flat(incr), *_flat(put), *_flat(put_new), *_flat(prune), RECORD_SECONDS]
        stamped, values = self._update(keys=[key], args=[*args, field, repr(now), gap, *read])
        return [None if v is None else v.decode() for v in values], bool(stamped)

    def replace(self, key: str, *, version: str, put: dict[str, str], drop: list[str]) -> bool:
        args = [version, *_flat(put), *drop, RECORD_SECONDS]
        return bool(self._replace(keys=[key], args=args))

    def read(self, keys: list[str]) -> list[dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [{k.decode(): v.decode() for k, v in found.items()} for found in pipe.execute()]

    def clear(self, key: str) -> None:
        self.client.delete(key)


class _CacheStore:
    """The same record as a dict in Django's cache, changed under a lock: atomic within one
    process, which is what the embedded mode (local-memory cache) has."""

    _lock = threading.Lock()

    def update(
        self,
        key: str,
        *,
        incr: dict[str, int],
        put: dict[str, str],
        put_new: dict[str, str],
        prune: dict[str, int],
        read: list[str],
        stamp: tuple[str, float, float] | None = None,
    ) -> tuple[list[str | None], bool]:
        with self._lock:
            record: dict[str, str] = cache.get(key) or {}
            for name, amount in incr.items():
                record[name] = str(int(record.get(name, 0)) + amount)
            record.update(put)
            for name, value in put_new.items():
                if not record.get(name):
                    record[name] = value
            for name in list(record):
                kind, _, rest = name.partition(":")
                if kind in prune and rest and int(rest.split(":")[0]) < prune[kind]:
                    del record[name]
            values = [record.get(name) for name in read]
            stamped = False
            if stamp is not None and stamp[1] - float(record.get(stamp[0]) or 0) >= stamp[2]:
                record[stamp[0]], stamped = repr(stamp[1]), True
            cache.set(key, record, RECORD_SECONDS)
            return values, stamped

    def replace(self, key: str, *, version: str, put: dict[str, str], drop: list[str]) -> bool:
        with self._lock:
            record: dict[str, str] = cache.get(key) or {}
            if record.get("ver", "") != version:
                return False
            record.update(put)
            for name in drop:
                record.pop(name, None)
            record["ver"] = str(int(record.get("ver") or 0) + 1)
            cache.set(key, record, RECORD_SECONDS)
            return True

    def read(self, keys: list[str]) -> list[dict[str, str]]:
        found = cache.get_many(keys)
        return [dict(found.get(key) or {}) for key in keys]

    def clear(self, key: str) -> None:
        cache.delete(key)


_stores: dict[int, _Store] = {}


def _store() -> _Store:
    """The Redis store when the cache is project.cache.RedisCache (one per process and
    client), else the cache store."""
    client = redis_client(cache)
    if client is None:
        return _CacheStore()
    store = _stores.get(id(client))
    if store is None:
        store = _stores[id(client)] = _RedisStore(client)
    return store


def _key(destination_id: int) -> str:
    return cache.make_key(f"health:{destination_id}")


# --- Observing tries ---------------------------------------------------------------------------


class Verdict(StrEnum):
    GO = "go"  # the lane may go on
    CLOSED = "closed"  # go on: the probe closed the breaker, the backlog is due (outbox.resume)
    STOP = "stop"  # the breaker is open or the destination disabled: send nothing more


def _bin(duration_ms: int) -> int:
    for index, edge in enumerate(LATENCY_BINS_MS):
        if duration_ms <= edge:
            return index
    return len(LATENCY_BINS_MS)


_pruned: dict[int, int] = {}  # destination id -> the minute this process last pruned it


BREAKER_MINUTES = 60  # the breaker's counts are kept this long (its window is at most this)


def _breaker_fields(minute: int) -> list[str]:
    """Every breaker count field that may exist: a closed breaker starts counting afresh."""
    minutes = range(minute - BREAKER_MINUTES, minute + 1)
    return [f"{kind}:{m}" for m in minutes for kind in ("bt", "bx")]


def _window_fields(minute: int) -> list[str]:
    minutes = range(minute - settings.DESTINATION_BREAKER_WINDOW_MINUTES + 1, minute + 1)
    return [f"{kind}:{m}" for m in minutes for kind in ("bt", "bx")]


def observe(
    destination: Destination,
    outcomes: Sequence[transport.Outcome],
    *,
    probe: bool = False,
    now: datetime | None = None,
) -> Verdict:
    """Count the tries of a flushed group of results (in the order they were made) and move
    the breaker or the destination's state if they say so. `probe`: they are the probe(s) of
    a half-open breaker. Returns whether the lane may go on. Never raises for want of Redis
    (the results are recorded already): those tries are then not counted."""
    if not outcomes or not settings.DESTINATION_HEALTH:
        return Verdict.GO
    try:
        return _observe(destination, outcomes, probe=probe, now=now)
    except RedisError:
        logger.warning("Destination %s: health not updated (Redis)", destination.pk, exc_info=True)
        return Verdict.GO


def _observe(
    destination: Destination,
    outcomes: Sequence[transport.Outcome],
    *,
    probe: bool,
    now: datetime | None,
) -> Verdict:
    now = now or timezone.now()
    at = now.timestamp()
    minute, five, hour = int(at // 60), int(at // 300), int(at // 3600)
    tries = len(outcomes)
    failures = sum(outcome.kind is not transport.Kind.SUCCESS for outcome in outcomes)
    transient = sum(outcome.kind is transport.Kind.TRANSIENT for outcome in outcomes)
    incr = {
        f"bt:{minute}": tries,
        f"bx:{minute}": transient,
        f"mt:{minute}": tries,
        f"mf:{minute}": failures,
        f"ht:{hour}": tries,
        f"hf:{hour}": failures,
    }
    for outcome in outcomes:
        if outcome.status_code is not None:
            name = f"ql:{five}:{_bin(outcome.duration_ms)}"
            incr[name] = incr.get(name, 0) + 1
    stamp = str(at)
    put: dict[str, str] = {}
    put_new: dict[str, str] = {}
    last_success = max(
        (i for i, o in enumerate(outcomes) if o.kind is transport.Kind.SUCCESS), default=None
    )
    if last_success is not None:
        put["ok_at"] = stamp
        put["streak"] = str(tries - 1 - last_success)
        put["failing"] = stamp if last_success < tries - 1 else ""
    else:
        incr["streak"] = failures
        put_new["failing"] = stamp
    if failures:
        put["fail_at"] = stamp
        last = next(o for o in reversed(outcomes) if o.kind is not transport.Kind.SUCCESS)
        put["error"] = _error_text(last)
    throttled = [o for o in outcomes if o.status_code == 429]
    if throttled:
        # Slow the whole lane down, not just this log: nothing goes before Retry-After.
        wait = throttled[-1].retry_after or THROTTLE_SECONDS
        put["pause"] = str(at + min(wait, settings.DELIVERY_RETRY_AFTER_CAP))
    prune: dict[str, int] = {}
    if _pruned.get(destination.pk) != minute:
        if len(_pruned) >= 10_000:
            _pruned.clear()
        _pruned[destination.pk] = minute
        prune = {"mt": minute - 60, "mf": minute - 60}
        prune |= {"bt": minute - BREAKER_MINUTES, "bx": minute - BREAKER_MINUTES}
        prune |= {"ht": hour - 24, "hf": hour - 24, "ql": five - 12}
    window = _window_fields(minute)
    read = ["ver", "state", "until", "trips", "failing", *window]
    values, publish = _store().update(
        _key(destination.pk),
        incr=incr,
        put=put,
        put_new=put_new,
        prune=prune,
        read=read,
        stamp=("pub", at, PUBLISH_SECONDS),  # destinationUpdates' figures, once a second
    )
    record = dict(zip(read, values, strict=True))
    if publish:
        live.publish_destination(destination.account_id, destination.pk)
    gone = any(outcome.status_code == 410 for outcome in outcomes)
    if gone:
        return _disable(destination, DisabledCause.GONE, "The destination answered 410 Gone.")
    failing = record["failing"]
    if (
        failing
        and settings.DESTINATION_DISABLE_AFTER
        and (at - float(failing) >= settings.DESTINATION_DISABLE_AFTER)
    ):
        since = datetime.fromtimestamp(float(failing), UTC).isoformat(timespec="seconds")
        return _disable(destination, DisabledCause.FAILING, f"Every try has failed since {since}.")
    verdict = _breaker(destination, record, outcomes, transient, probe, now, window)
    return Verdict.STOP if throttled else verdict


def _breaker(
    destination: Destination,
    record: dict[str, str | None],
    outcomes: Sequence[transport.Outcome],
    transient: int,
    probe: bool,
    now: datetime,
    window: list[str],
) -> Verdict:
    """Move the breaker after `outcomes` (`record`: the counts with them)."""
    if not settings.DESTINATION_BREAKER:
        return Verdict.GO
    minute = int(now.timestamp() // 60)
    version = record["ver"] or ""
    if record["state"] == "open":
        if not probe:
            return Verdict.STOP  # opened meanwhile (by this lane's or another's results)
        if transient:
            return _reopen(destination, version, int(record["trips"] or 1), now, outcomes)
        return Verdict.CLOSED if _close(destination, version, minute) else Verdict.GO
    window_tries = sum(int(record[f] or 0) for f in window if f.startswith("bt"))
    window_transient = sum(int(record[f] or 0) for f in window if f.startswith("bx"))
    if window_tries >= settings.DESTINATION_BREAKER_MIN_TRIES and (
        window_transient * 100 >= settings.DESTINATION_BREAKER_FAILURE_PERCENT * window_tries
    ):
        detail = (
            f"{window_transient} of {window_tries} tries in the last "
            f"{settings.DESTINATION_BREAKER_WINDOW_MINUTES} min failed; last error: "
            f"{_error_text(outcomes[-1])}"
        )
        _open(destination, version, 1, now, detail)
        return Verdict.STOP
    return Verdict.GO


def _error_text(outcome: transport.Outcome) -> str:
    if outcome.status_code is not None:
        return f"HTTP {outcome.status_code}"
    return f"{outcome.error_class}: {outcome.error_message}"[:500]


def cooldown(trips: int) -> float:
    """Seconds an opened breaker waits before its probe, after `trips` openings in a row."""
    grown = settings.DESTINATION_BREAKER_COOLDOWN_SECONDS * 2 ** min(trips - 1, 30)
    return float(min(grown, settings.DESTINATION_BREAKER_MAX_COOLDOWN_SECONDS))


def _open(destination: Destination, version: str, trips: int, now: datetime, detail: str) -> bool:
    until = now.timestamp() + cooldown(trips)
    put = {"state": "open", "until": str(until), "trips": str(trips)}
    if trips == 1:
        put["opened_at"] = str(now.timestamp())
    if not _store().replace(_key(destination.pk), version=version, put=put, drop=[]):
        return False  # another process moved it first
    probe_at = datetime.fromtimestamp(until, UTC).isoformat(timespec="seconds")
    notice(destination, NoticeKind.BREAKER_OPENED, f"{detail}; next probe at {probe_at}")
    return True


def _reopen(
    destination: Destination,
    version: str,
    trips: int,
    now: datetime,
    outcomes: Sequence[transport.Outcome],
) -> Verdict:
    limit = settings.DESTINATION_DISABLE_AFTER_TRIPS
    if limit and trips + 1 > limit:
        return _disable(
            destination,
            DisabledCause.FAILING,
            f"The circuit breaker opened {trips + 1} times in a row.",
        )
    _open(
        destination,
        version,
        trips + 1,
        now,
        f"The probe failed ({_error_text(outcomes[-1])})",
    )
    return Verdict.STOP


# A closed breaker's fields (with the window's counts dropped: they are what opened it, so a
# closed breaker starts counting afresh).
_CLOSED = {"state": "closed", "trips": "0", "until": "", "opened_at": ""}


def _close(destination: Destination, version: str, minute: int) -> bool:
    window = _breaker_fields(minute)
    if not _store().replace(_key(destination.pk), version=version, put=_CLOSED, drop=window):
        return False
    notice(destination, NoticeKind.BREAKER_CLOSED, "A probe delivery succeeded.")
    return True


def _disable(destination: Destination, cause: DisabledCause, reason: str) -> Verdict:
    """Disable the destination for its health (once: another process may have first). Its
    waiting logs wait for a re-enable; new events are not fanned out to it."""
    now = timezone.now()
    with transaction.atomic():
        changed = Destination.objects.filter(pk=destination.pk, is_active=True).update(
            is_active=False,
            disabled_cause=cause,
            disabled_reason=reason,
            disabled_at=now,
            updated_at=now,
        )
        if changed:
            notice(destination, NoticeKind.DISABLED, reason)
            selectors.forget_destination_ids(destination.account_id)
    destination.is_active, destination.disabled_cause = False, cause
    destination.disabled_reason, destination.disabled_at = reason, now
    return Verdict.STOP


def reset(destination_id: int) -> None:
    """Close the breaker and forget the failure streak (a person re-enabled the destination);
    the figures stay."""
    store = _store()
    key = _key(destination_id)
    for _ in range(5):
        (record,) = store.read([key])
        put = {**_CLOSED, "failing": "", "streak": "0"}
        minute = int(timezone.now().timestamp() // 60)
        window = _breaker_fields(minute)
        if store.replace(key, version=record.get("ver", ""), put=put, drop=window):
            return


def notice(destination: Destination, kind: NoticeKind, detail: str) -> None:
    """Record an operational change of the destination, published live after commit."""
    logger.warning("Destination %s: %s (%s)", destination.pk, kind, detail)
    created = Notice.objects.create(
        account_id=destination.account_id, destination=destination, kind=kind, detail=detail
    )
    account_id, destination_id = destination.account_id, destination.pk
    transaction.on_commit(
        lambda: live.publish_destination(account_id, destination_id, notice_id=created.pk)
    )


# --- Admission: may a lane send now? ---------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    go: bool
    probe: bool = False  # go, as the half-open breaker's probe: one log
    defer_until: datetime | None = None  # open: move the due logs to this (the probe time)
    look_again_at: datetime | None = None  # when the lane should run again (not go)


GO = Admission(go=True)


def admit(destination_id: int, *, now: datetime | None = None) -> Admission:
    """Whether a lane of the destination may claim and send now: not before the Retry-After
    of its latest 429; yes while the breaker is closed (or off); no while it is open (its
    due logs move to the probe time); in half-open, yes for the holder of one of the PROBES
    probe tokens, no for the others (the probe's lane goes on with the backlog once it
    closes)."""
    if not settings.DESTINATION_HEALTH:
        return GO
    try:
        (state, until, pause), _ = _store().update(
            _key(destination_id),
            incr={},
            put={},
            put_new={},
            prune={},
            read=["state", "until", "pause"],
        )
    except RedisError:  # the breaker cannot be asked: deliver (a failure is retried)
        logger.warning("Destination %s: breaker not read (Redis)", destination_id, exc_info=True)
        return GO
    now = now or timezone.now()
    if pause and float(pause) > now.timestamp():  # it answered 429: Retry-After
        return Admission(go=False, look_again_at=datetime.fromtimestamp(float(pause), UTC))
    if not settings.DESTINATION_BREAKER or state != "open" or not until:
        return GO
    probe_at = datetime.fromtimestamp(float(until), UTC)
    if now < probe_at:
        return Admission(go=False, defer_until=probe_at, look_again_at=probe_at)
    seconds = int(policy.lease().total_seconds())
    for token in range(settings.DESTINATION_BREAKER_PROBES):
        if cache.add(f"probe:{destination_id}:{until}:{token}", 1, timeout=seconds):
            return Admission(go=True, probe=True)
    return Admission(go=False, look_again_at=now + policy.lease())


# --- Figures for the API -----------------------------------------------------------------------


@dataclass
class Health:
    state: State
    success_rate_1h: float | None
    success_rate_24h: float | None
    attempts_1h: int
    failures_1h: int
    latency_p50_ms: int | None
    latency_p95_ms: int | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error: str
    consecutive_failures: int
    in_flight: int
    backlog: int
    next_attempt_at: datetime | None
    opened_at: datetime | None


def _moment(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


def _percentile(histogram: list[int], share: float) -> int | None:
    total = sum(histogram)
    if not total:
        return None
    rank = share * total
    seen = 0
    for index, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = LATENCY_BINS_MS[index - 1] if index else 0
            high = LATENCY_BINS_MS[index] if index < len(LATENCY_BINS_MS) else 2 * low
            return math.ceil(low + (high - low) * (rank - seen) / count)
        seen += count
    return None  # pragma: no cover (rank <= total)


def _sum(record: dict[str, str], kind: str, slots: range) -> int:
    return sum(int(record.get(f"{kind}:{slot}", 0)) for slot in slots)


def _rate(tries: int, failures: int) -> float | None:
    return None if not tries else round((tries - failures) / tries, 4)


def figures(destinations: Sequence[Destination], *, now: datetime | None = None) -> list[Health]:
    """The health of each destination: one read of the records (one round trip), one of the
    lane slots, one statement for the accounts' default limits and one for the waiting logs,
    whatever their number."""
    if not destinations:
        return []
    now = now or timezone.now()
    at = now.timestamp()
    minute, five, hour = int(at // 60), int(at // 300), int(at // 3600)
    records = _store().read([_key(d.pk) for d in destinations])
    accounts = {d.account_id for d in destinations if not hasattr(d, "account_max_in_flight")}
    defaults = dict(
        Account.objects.filter(pk__in=accounts).values_list("pk", "default_max_in_flight")
    )
    for d in destinations:
        if d.account_id in defaults:  # what policy.max_in_flight reads
            d.account_max_in_flight = defaults[d.account_id]  # type: ignore[attr-defined]
    slots = {
        d.pk: [policy.lane_slot_key(d.pk, s) for s in range(policy.max_in_flight(d))]
        for d in destinations
    }
    held = cache.get_many([key for keys in slots.values() for key in keys])
    waiting = _waiting([d.pk for d in destinations])
    last_hour = range(minute - 59, minute + 1)
    result = []
    for destination, record in zip(destinations, records, strict=True):
        tries_1h, failures_1h = _sum(record, "mt", last_hour), _sum(record, "mf", last_hour)
        tries_24h = _sum(record, "ht", range(hour - 23, hour + 1))
        failures_24h = _sum(record, "hf", range(hour - 23, hour + 1))
        histogram = [
            sum(int(record.get(f"ql:{f}:{b}", 0)) for f in range(five - 11, five + 1))
            for b in range(len(LATENCY_BINS_MS) + 1)
        ]
        window = range(minute - settings.DESTINATION_BREAKER_WINDOW_MINUTES + 1, minute + 1)
        window_tries, window_failures = _sum(record, "mt", window), _sum(record, "mf", window)
        streak = int(record.get("streak") or 0)
        until = _moment(record.get("until"))
        is_open = settings.DESTINATION_BREAKER and record.get("state") == "open" and until
        backlog, first_due = waiting.get(destination.pk, (0, None))
        if not destination.is_active:
            state = State.DISABLED
        elif is_open:
            state = State.OPEN if until and now < until else State.HALF_OPEN
        elif streak or (window_tries and window_failures * 100 >= DEGRADED_PERCENT * window_tries):
            state = State.DEGRADED
        else:
            state = State.HEALTHY
        result.append(
            Health(
                state=state,
                success_rate_1h=_rate(tries_1h, failures_1h),
                success_rate_24h=_rate(tries_24h, failures_24h),
                attempts_1h=tries_1h,
                failures_1h=failures_1h,
                latency_p50_ms=_percentile(histogram, 0.5),
                latency_p95_ms=_percentile(histogram, 0.95),
                last_success_at=_moment(record.get("ok_at")),
                last_failure_at=_moment(record.get("fail_at")),
                last_error=record.get("error", ""),
                consecutive_failures=streak,
                in_flight=sum(held.get(key) is not None for key in slots[destination.pk]),
                backlog=backlog,
                next_attempt_at=until if is_open else first_due,
                opened_at=_moment(record.get("opened_at")) if is_open else None,
            )
        )
    return result


def _waiting(destination_ids: list[int]) -> dict[int, tuple[int, datetime | None]]:
    """Per destination: its waiting (queued + retrying) logs, counted up to BACKLOG_CAP, and
    the first one's due time; one statement (each part reads the destination's partial due
    index, at most BACKLOG_CAP entries)."""
    table = DeliveryLog._meta.db_table
    part = (
        f"SELECT %s, (SELECT count(*) FROM (SELECT 1 FROM {table} WHERE destination_id = %s "  # noqa: S608
        f"AND status IN ('queued', 'retrying') LIMIT {BACKLOG_CAP}) capped), "
        f"(SELECT min(next_attempt_at) FROM {table} WHERE destination_id = %s "
        f"AND status IN ('queued', 'retrying'))"
    )
    sql = " UNION ALL ".join([part] * len(destination_ids))
    params = [value for pk in destination_ids for value in (pk, pk, pk)]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    found: dict[int, tuple[int, datetime | None]] = {}
    for pk, count, due in rows:
        if isinstance(due, str):  # SQLite returns the text it stores
            due = datetime.fromisoformat(due)
        if due is not None and due.tzinfo is None:
            due = due.replace(tzinfo=UTC)
        found[int(pk)] = (int(count), due)
    return found


@dataclass
class Totals:
    destinations: int
    by_state: dict[State, int]
    attempts_1h: int
    failures_1h: int
    success_rate_1h: float | None
    backlog: int


def account_totals(account_id: uuid.UUID) -> Totals:
    """The health of an account's destinations added up (same cost as `figures` of them)."""
    found = figures(list(Destination.objects.filter(account_id=account_id).order_by("id")))
    attempts, failures = sum(h.attempts_1h for h in found), sum(h.failures_1h for h in found)
    return Totals(
        destinations=len(found),
        by_state={state: sum(h.state is state for h in found) for state in State},
        attempts_1h=attempts,
        failures_1h=failures,
        success_rate_1h=_rate(attempts, failures),
        backlog=sum(h.backlog for h in found),
    )

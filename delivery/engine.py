"""The delivery engine: lanes.

A lane is one destination. A lane run claims the destination's due logs in batches
(outbox.claim), sends them in order over the thread's keep-alive session, writes their results
in bulk (outbox.record, one transaction per group) and goes on while due work remains, for at
most DELIVERY_LANE_SLICE_SECONDS; then the task layer runs it again at the back of the queue,
so a busy destination cannot starve the others.

Lane slots live in the cache (Redis in production, shared by every worker process): at most
`policy.max_in_flight(destination)` lanes of one destination run at once, so a hanging
destination holds at most that many worker threads. A destination's first send goes out
alone; one slower than DELIVERY_SLOW_SECONDS marks it slow (shared): its lanes give back the
unsent rest of the batch and claim one log at a time, and at most DELIVERY_SLOW_LANES of them
run at once in one worker process — the others wait outside the worker threads (deferred,
their logs keep their place and their retry budget), so healthy destinations find a free
thread. (Destinations that hang on their very first send hold a thread each for one read
timeout before they are known to be slow.) Lanes of quick destinations, busy with CPU rather
than the network, send at most DELIVERY_QUICK_LANES batches at once per process (_QuickLanes).

Nothing here enqueues: a run returns what must follow (run again, later, on more slots, or a
wake when the next retry falls due) and delivery/tasks.py schedules it."""

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from delivery import health, limits, outbox, policy, transport
from delivery.models import AUTOMATIC, DeliveryLog, Destination, LogStatus
from identity.models import Account
from project.cache import redis_client

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.25  # results of a batch are written at least this often
WAKE_SECONDS = 2  # an account's wake flag: new events enqueue one wake per this long, at most


@dataclass
class LaneRun:
    """What a lane run did, and what must follow it."""

    sent: int = 0
    again: bool = False  # its time slice ended with work left: run again (slot kept)
    deferred: bool = False  # slow destination, no slow-lane room here: run later (slot kept)
    spawn: list[int] = field(default_factory=list)  # more slots taken: run a lane on each
    wake_at: datetime | None = None  # slot released; the next retry falls due then


# --- Shared state in the cache ---------------------------------------------------------------


_slot_key = policy.lane_slot_key


def _slot_seconds() -> int:
    # A lane that dies (killed worker) frees its slot when its claims' lease would end.
    return int(policy.lease().total_seconds()) + 1


def take_slot(destination_id: int, slot: int) -> bool:
    return bool(cache.add(_slot_key(destination_id, slot), 1, timeout=_slot_seconds()))


def free_slot(destination_id: int, slot: int) -> None:
    cache.delete(_slot_key(destination_id, slot))


def lane_running(destination_id: int, slot: int = 0) -> bool:
    """Whether lane slot `slot` of the destination is held. A slot lasts one lease past its
    lane's last claim, so once a claim's lease has run out the slot of the lane that made it
    has too (a killed worker's lanes free themselves)."""
    return cache.get(_slot_key(destination_id, slot)) is not None


def lanes_to_start(destination_ids: Iterable[int]) -> list[int]:
    """The destinations whose first lane slot was free and is now taken: a lane must be run
    for each. A destination whose lane is running is left to it (a run looks for due work
    again after releasing its slot, so nothing committed before this call is missed). On
    Redis the slots are taken in one round trip (an account's wake takes one per destination)."""
    wanted = list(dict.fromkeys(destination_ids))
    client = redis_client(cache)
    if client is None:
        return [d for d in wanted if take_slot(d, 0)]
    pipe = client.pipeline(transaction=False)
    for destination_id in wanted:  # what cache.add sends, for each slot
        key = cache.make_and_validate_key(_slot_key(destination_id, 0))
        pipe.set(key, 1, nx=True, ex=_slot_seconds())
    return [d for d, taken in zip(wanted, pipe.execute(), strict=True) if taken]


def _wake_key(account_id: uuid.UUID | str) -> str:
    return f"wake:{account_id}"


def wake_flag(account_id: uuid.UUID | str) -> bool:
    """Whether a wake of `account_id`'s lanes must be enqueued: one per WAKE_SECONDS at most
    while one is pending (the wake clears the flag before it looks at the lanes)."""
    return bool(cache.add(_wake_key(account_id), 1, timeout=WAKE_SECONDS))


def clear_wake_flag(account_id: uuid.UUID | str) -> None:
    cache.delete(_wake_key(account_id))


def wake_later(destination_id: int, at: datetime) -> bool:
    """Whether a wake of the destination's lane at `at` must be scheduled: not when one at
    or before `at` is pending already."""
    key = f"wake-at:{destination_id}"
    pending = cache.get(key)
    if pending is not None and pending <= at.timestamp():
        return False
    ttl = max(1, int((at - timezone.now()).total_seconds()) + 1)
    cache.set(key, at.timestamp(), timeout=ttl)
    return True


def _pace_key(destination_id: int) -> str:
    return f"pace:{destination_id}"


# A destination's pace, shared: SLOW after a send slower than DELIVERY_SLOW_SECONDS, FAST after
# a batch without one; unknown (no entry) until its first send, which goes out alone, so that
# a destination that hangs never holds a whole batch `sending` behind its first request.
FAST, SLOW = "fast", "slow"
PACE_SECONDS = 600


class _Room:
    """A count of lanes doing something in this process, kept under a limit."""

    def __init__(self) -> None:
        self._room = threading.Condition()
        self.running = 0

    def _take(self, limit: int, wait: float) -> bool:
        """Count one more lane if fewer than `limit` are counted, waiting up to `wait`
        seconds for one to leave; False when none did."""
        with self._room:
            if not self._room.wait_for(lambda: self.running < limit, wait):
                return False
            self.running += 1
            return True

    def leave(self) -> None:
        with self._room:
            self.running -= 1
            self._room.notify()


class _SlowLanes(_Room):
    """Lanes of slow destinations running in this process, at most DELIVERY_SLOW_LANES."""

    def enter(self) -> bool:
        return self._take(settings.DELIVERY_SLOW_LANES, 0)


slow_lanes = _SlowLanes()


# A destination whose sends of a batch took under this long on average is quick: its lane is
# busy with CPU (the sends' own Python, its claims and writes) more than waiting on the network.
QUICK_SECONDS = 0.01
QUICK_WAIT_SECONDS = 1.0  # a quick lane waits at most this long for room, then goes on anyway


class _QuickLanes(_Room):
    """Batches of quick destinations' lanes that one worker process sends at once: at most
    DELIVERY_QUICK_LANES (0: no limit). More threads busy with CPU do not send more (one
    process runs Python on one core at a time) but spend the CPU on handing the interpreter
    lock around: on the delivery benchmark, 16 such lanes took 1.6x the CPU per delivery of
    4. Lanes that wait on the network are not counted, and a lane waits for room between
    batches only, holding no claim, so the limit costs them nothing.

    Which destinations are quick is known per process (from its own sends): a scheduling hint
    for this process alone, not shared state."""

    MAX_KNOWN = 10_000

    def __init__(self) -> None:
        super().__init__()
        self.known: dict[int, bool] = {}

    def enter(self, destination_id: int) -> bool:
        """Wait for room when the destination is known quick; True when room was taken (call
        `leave` after the batch)."""
        limit = settings.DELIVERY_QUICK_LANES
        if not limit or not self.known.get(destination_id):
            return False
        return self._take(limit, QUICK_WAIT_SECONDS)

    def learn(self, destination_id: int, quick: bool) -> None:
        if len(self.known) >= self.MAX_KNOWN:
            self.known.clear()
        self.known[destination_id] = quick


quick_lanes = _QuickLanes()


# --- Lanes -----------------------------------------------------------------------------------


def lane_run(destination_id: int, slot: int = 0) -> LaneRun:
    """Deliver the destination's due logs, holding lane slot `slot` (taken by the caller, see
    `lanes_to_start`), until none is due or the time slice ends. Statements per batch: two to
    claim, three per group of results (lock check, bulk update, bulk insert of attempts)."""
    run = LaneRun()
    holding = True
    in_slow_lane = False
    try:
        destination = destination_copies.get(destination_id)
        if destination is None and (destination := destination_copies.load(destination_id)) is None:
            return run  # its waiting logs failed when it was deleted
        if _waits(destination):  # our copy may predate a re-enable: ask the database
            destination = destination_copies.load(destination_id)
            if destination is None or _waits(destination):
                return run  # disabled for its health: its logs wait for a re-enable (a wake)
        pace = cache.get(_pace_key(destination_id))
        slow = pace == SLOW
        deadline = time.monotonic() + settings.DELIVERY_LANE_SLICE_SECONDS
        claim_more = True
        admit = True  # ask the breaker before the next claim
        probe = False
        while True:
            if admit and claim_more:
                admission = health.admit(destination_id)
                if not admission.go:
                    if admission.defer_until is not None:
                        outbox.defer(destination_id, admission.defer_until)
                    run.wake_at = admission.look_again_at
                    return run
                probe, admit = admission.probe, admission.probe
            if slow and not in_slow_lane:
                in_slow_lane = slow_lanes.enter()
                if not in_slow_lane:
                    cache.touch(_slot_key(destination_id, slot), _slot_seconds())
                    run.deferred = True
                    return run
            limit = 1 if probe else policy.batch_size(slow=pace != FAST and destination.is_active)
            batch = None
            in_quick_lane = claim_more and pace == FAST and quick_lanes.enter(destination_id)
            try:
                if claim_more:
                    # A quick destination's `sending` goes out with the batch's first results
                    # (FLUSH_SECONDS of sends, or one slow send, later), in their message.
                    batch = outbox.claim(
                        destination_id=destination_id, limit=limit, publish=pace != FAST
                    )
                if batch is not None:
                    renew = (_slot_key(destination_id, slot), _slot_seconds())
                    if batch.destination_version != destination.updated_at:  # or unknown
                        if (changed := destination_copies.load(destination_id)) is None:
                            cache.touch(*renew)
                            _fail(batch, outbox.DELETED)  # since our copy was loaded
                            return run
                        destination = changed
                    rate = limits.rate_limit(destination) if destination.is_active else 0
                    if not rate:  # else the batch's first rate reservation renews the slot
                        cache.touch(*renew)
                    slow, stopped = _run_batch(
                        destination, batch, run, deadline=deadline, probe=probe, renew=renew
                    )
                    if stopped:  # breaker open, destination disabled, or a rate to keep
                        admit = True
                        if _waits(destination) or run.wake_at is not None:
                            return run
            finally:
                if in_quick_lane:
                    quick_lanes.leave()
            if batch is None:
                free_slot(destination_id, slot)
                holding = False
                due = outbox.next_due(destination_id)
                if due is not None and due <= timezone.now() and take_slot(destination_id, slot):
                    holding = claim_more = True  # due after our last claim, before the release
                    continue
                run.wake_at = due if due is not None and due > timezone.now() else None
                return run
            # A claim short of its limit took everything due: the release below checks again.
            claim_more = len(batch.logs) == limit
            if destination.is_active:
                if pace != (new_pace := SLOW if slow else FAST):
                    _set_pace(destination_id, new_pace)
                    pace = new_pace
                    if not slow and in_slow_lane:
                        slow_lanes.leave()
                        in_slow_lane = False
                elif (
                    slot == 0 and pace == FAST and len(batch.logs) == policy.batch_size(slow=False)
                ):
                    run.spawn += [
                        extra
                        for extra in range(1, policy.max_in_flight(destination))
                        if take_slot(destination_id, extra)
                    ]
            if time.monotonic() >= deadline:
                run.again = True
                return run
    finally:
        if in_slow_lane:
            slow_lanes.leave()
        if holding and not (run.again or run.deferred):
            free_slot(destination_id, slot)


class _DestinationCopies:
    """This process's copies of the destinations its lanes ran. A claim on PostgreSQL returns
    the destination's updated_at (Claim.destination_version): a copy older than that is
    loaded again before anything is sent, so a changed URL, secret, header or state is used
    from the next claim on. Loading a destination in every lane run cost more CPU than its
    claim. (Destinations are changed with save(), which sets updated_at; elsewhere than on
    PostgreSQL a claim returns no version and the copy is loaded again after each claim.)"""

    MAX = 10_000
    # With its account's default limits (policy.max_in_flight, limits.rate_limit); a change
    # of those moves the account's destinations' updated_at.
    _SELECT = (
        f"SELECT d.*, a.default_max_in_flight AS account_max_in_flight, "  # noqa: S608
        f"a.default_rate_limit AS account_rate_limit FROM {Destination._meta.db_table} d "
        f"JOIN {Account._meta.db_table} a ON a.id = d.account_id WHERE d.id = %s"
    )

    def __init__(self) -> None:
        self._copies: dict[int, Destination] = {}

    def get(self, destination_id: int) -> Destination | None:
        return self._copies.get(destination_id)

    def clear(self) -> None:
        self._copies.clear()

    def load(self, destination_id: int) -> Destination | None:
        """The destination as stored now (a raw query: the ORM's filter().first() cost twice
        its CPU), kept as this process's copy; None once deleted."""
        found = next(iter(Destination.objects.raw(self._SELECT, [destination_id])), None)
        if found is None:
            self._copies.pop(destination_id, None)
            return None
        if len(self._copies) >= self.MAX:
            self._copies.clear()
        self._copies[destination_id] = found
        return found


destination_copies = _DestinationCopies()


def _fail(batch: outbox.Claim, reason: str) -> None:
    """Fail a claimed batch without a request."""
    outbox.record_claimed(
        batch, [outbox.Result(log, LogStatus.FAILED, None, error=reason) for log in batch.logs]
    )


def _set_pace(destination_id: int, pace: str) -> None:
    if pace == SLOW:
        logger.info("Destination %s answers slowly: one delivery at a time", destination_id)
    cache.set(_pace_key(destination_id), pace, timeout=PACE_SECONDS)


def _waits(destination: Destination | None) -> bool:
    """Whether the destination was disabled for its health: its logs wait, unsent."""
    return (
        destination is not None
        and not destination.is_active
        and destination.disabled_cause in AUTOMATIC
    )


def _run_batch(
    destination: Destination,
    batch: outbox.Claim,
    run: LaneRun,
    *,
    deadline: float,
    probe: bool,
    renew: tuple[str, int],
) -> tuple[bool, bool]:
    """Send a claimed batch (see `_send_batch`); when the destination is inactive, fail it
    at once, or give it back when its health disabled it. Returns whether a send was slow and
    whether the lane must stop sending (breaker open, destination disabled)."""
    if destination.is_active:
        return _send_batch(destination, batch, run, deadline=deadline, probe=probe, renew=renew)
    if _waits(destination):
        outbox.give_back(batch, batch.logs)
        return False, True
    _fail(batch, outbox.INACTIVE)
    return False, False


def _send_batch(
    destination: Destination,
    batch: outbox.Claim,
    run: LaneRun,
    *,
    deadline: float,
    probe: bool,
    renew: tuple[str, int],
) -> tuple[bool, bool]:
    """Send the claimed logs in order, recording results (and counting them for the
    destination's health) at least every FLUSH_SECONDS. Stops at the first slow send, at the
    end of the lane's time slice, when a send could outlive the claim's lease, or when its
    results open the breaker or disable the destination, and gives the unsent rest back.
    Returns (a send was slow, the lane must stop sending). With a rate limit, the first
    reservation of request slots renews the lane's slot `renew` in its round trip."""
    pending: list[outbox.Result] = []
    flushed = time.monotonic()
    latest_start = batch.lease - timedelta(seconds=policy.send_timeout())
    sends = waited_ms = 0
    rate = limits.rate_limit(destination)
    slots = _RateSlots(destination.pk, rate, renew)

    def flush() -> bool:
        """Record `pending` and count it; True when the lane must stop."""
        outbox.record_claimed(batch, pending)
        outcomes = [result.outcome for result in pending if result.outcome is not None]
        verdict = health.observe(destination, outcomes, probe=probe)
        if verdict is health.Verdict.CLOSED:
            outbox.resume(destination.pk)  # the outage's retries are due now, in order
        return verdict is health.Verdict.STOP

    try:
        for index, log in enumerate(batch.logs):
            # A send started after `latest_start` could outlive the lease (the sweeper would
            # then hand the log to another lane while ours still sends it).
            if index and (time.monotonic() >= deadline or timezone.now() > latest_start):
                stop = flush()
                outbox.give_back(batch, batch.logs[index:])
                return False, stop
            if rate and (wait := slots.take(len(batch.logs) - index)) is not None:
                if pending:  # not before `wait`: the lane stops here
                    flush()
                outbox.give_back(batch, batch.logs[index:])
                run.wake_at = timezone.now() + timedelta(seconds=wait)
                return False, True
            outcome = _send(destination, log)
            pending.append(outbox.result_of(log, outcome))
            run.sent += 1
            sends, waited_ms = sends + 1, waited_ms + outcome.duration_ms
            if outcome.duration_ms >= settings.DELIVERY_SLOW_SECONDS * 1000:
                stop = flush()
                outbox.give_back(batch, batch.logs[index + 1 :])
                return True, stop
            if time.monotonic() - flushed >= FLUSH_SECONDS or outcome.status_code == 410:
                if flush():
                    outbox.give_back(batch, batch.logs[index + 1 :])
                    return False, True
                pending, flushed = [], time.monotonic()
        return False, bool(pending) and flush()
    finally:
        if sends:
            quick_lanes.learn(destination.pk, waited_ms < QUICK_SECONDS * 1000 * sends)


# A rate-limited lane reserves the request slots due within this long and sleeps for each
# (at rates of 10/s and more there is always one); when the next is further away it gives its
# worker thread back, and is woken when the slot comes (Huey's schedule: up to a second late,
# so slower than the rate, never faster).
RATE_SLEEP_SECONDS = 0.1
RATE_EARLY_SECONDS = 0.001


class _RateSlots:
    """A lane's reserved request slots of a rate-limited destination (limits.reserve)."""

    def __init__(self, destination_id: int, rate: float, renew: tuple[str, int] | None) -> None:
        self.destination_id, self.rate = destination_id, rate
        self.renew = renew  # renewed with the first reservation (limits.reserve)
        self.due: list[float] = []  # monotonic times of the slots not used yet

    def take(self, wanted: int) -> float | None:
        """Wait for the next slot (reserving up to `wanted` when none is left); None once
        it is due, else the seconds until one would be (nothing is held then)."""
        if not self.due:
            grant = limits.reserve(
                self.destination_id, self.rate, wanted, RATE_SLEEP_SECONDS, renew=self.renew
            )
            self.renew = None
            if not grant.count:
                return grant.first
            start = time.monotonic() + grant.first
            self.due = [start + i * grant.spacing for i in range(grant.count)]
        # Under a millisecond early goes now: a sleep hands the interpreter lock to another
        # thread (costly with many), and the rate is kept on average by the reservation.
        if (wait := self.due.pop(0) - time.monotonic()) > RATE_EARLY_SECONDS:
            time.sleep(wait)
        return None


def _send(destination: Destination, log: DeliveryLog) -> transport.Outcome:
    try:
        return transport.send(
            url=destination.url,
            method=destination.http_method,
            headers=destination.headers,
            payload=log.event.payload,
            body=log.event.body,
            webhook_id=log.webhook_id,
            secret=destination.signing_secret,
        )
    except Exception as error:
        # send() itself does not raise; reading the destination's fields or a bug may. The try
        # is recorded as a transient failure, so the retry schedule bounds it: a log never
        # stays `sending` for the sweeper to send again and again.
        logger.exception("Log %s: the send raised; recorded as a transient failure", log.pk)
        return transport.Outcome.failure(transport.Kind.TRANSIENT, 0, error)


def deliver_log(log_id: int) -> str | None:
    """Send one log once, now, if it is due and nobody holds it (outside any lane). Returns the
    status this try ended in, or None when the log was not claimable (already done, held, or
    not yet due) — so running it twice never sends twice — or when the send outlived its lease
    and the sweeper took the log back (it recorded this try as a lost one)."""
    batch = outbox.claim(log_id=log_id)
    if batch is None:
        return None
    (log,) = batch.logs
    destination = (
        None
        if log.destination_id is None
        else Destination.objects.filter(pk=log.destination_id).first()
    )
    if destination is None or not destination.is_active:
        reason = outbox.DELETED if destination is None else outbox.INACTIVE
        result = outbox.Result(log, LogStatus.FAILED, None, error=reason)
    else:
        result = outbox.result_of(log, _send(destination, log))
    written = outbox.record([result], lease=batch.lease)
    if destination is not None and result.outcome is not None:
        health.observe(destination, [result.outcome])
    return str(result.status) if written else None

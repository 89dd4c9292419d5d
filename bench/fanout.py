"""Section 6 — fan-out of live updates on ONE daphne process; one run_huey worker delivers to
nginx. One account: 1,000 concurrent graphql-transport-ws subscribers of
`logUpdates(accountId)`; events are accepted one at a time (through the service, from the bench
process), and each subscriber's receipt of SUCCESS is compared with the log's
processedTimestamp (set just before the SUCCESS commit): status change → receipt. Reference:
the same with one subscriber. Spread: 1,000 subscribers over 100 accounts while 100 events/s
flow (open loop), the same receipt latency. Targets (issue 11): one account p99 ≤ 250 ms and
≤ 1 ms of daphne CPU per subscriber per change; spread p99 ≤ 100 ms."""

import statistics
import threading
import time
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bench import profiling, seed, wsclient
from bench.common import (
    BODY,
    PAYLOAD,
    Context,
    CpuMeter,
    Section,
    child_env,
    fmt,
    free_port,
    fresh_state,
    knob,
    log,
    percentile,
    processes,
    ratio,
)

SUBSCRIBERS = knob("BENCH_FANOUT_SUBSCRIBERS", 1000)
SPREAD_ACCOUNTS = knob("BENCH_FANOUT_ACCOUNTS", 100)
SPREAD_RATE = knob("BENCH_FANOUT_RATE", 100)  # events/s over all the accounts
SPREAD_SECONDS = knob("BENCH_FANOUT_SECONDS", 20)
CONNECT_CONCURRENCY = 50
EVENTS = 3
REFERENCE_EVENTS = 3
EVENT_TIMEOUT = 40.0
PY_SPY_SECONDS = 10
IDLE_SECONDS = 5
TARGET_P99_MS = 250.0  # one account, every subscriber
TARGET_CPU_MS = 1.0  # daphne CPU per subscriber per status change
TARGET_SPREAD_P99_MS = 100.0
if TYPE_CHECKING:
    from delivery.ingest import IngestResult

QUERY = "subscription ($id: ID) { logUpdates(accountId: $id) { id status processedTimestamp } }"


class Fleet:
    """Subscribers held by the bench's client loop. Each records when it heard anything (the
    readiness test: the server keeps one channel per process, so the channel layer cannot count
    them) and every SUCCESS: receipts[log id] = latencies (arrival - processedTimestamp, ms)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = wsclient.LoopThread()
        self.heard: list[bool] = []
        self.receipts: dict[int, list[float]] = {}
        self.arrivals: list[tuple[float, float]] = []  # (arrival, latency ms) of each receipt
        self.messages = 0
        self.subscribed = 0  # subscribe messages sent
        self.tasks: list[object] = []
        self.failures: list[str] = []  # why subscribers ended

    def add(self, tenant: seed.Tenant, n: int) -> None:
        variables = {"id": str(tenant.account.pk)}
        first = len(self.heard)
        self.heard += [False] * n

        def on_next_of(i: int) -> wsclient.OnNext:
            def on_next(data: dict[str, object], arrival: float) -> None:
                self.heard[i] = True
                self.messages += 1
                update = data.get("logUpdates") or {}
                if isinstance(update, dict) and update.get("status") == "SUCCESS":
                    done = datetime.fromisoformat(str(update["processedTimestamp"])).timestamp()
                    latency = (arrival - done) * 1e3
                    self.receipts.setdefault(int(str(update["id"])), []).append(latency)
                    self.arrivals.append((arrival, latency))

            return on_next

        async def many() -> None:
            import asyncio

            gate = asyncio.Semaphore(CONNECT_CONCURRENCY)  # handshakes in flight

            async def one(i: int) -> None:
                await gate.acquire()
                held = [True]

                def ready() -> None:
                    if held[0]:
                        held[0] = False
                        self.subscribed += 1
                        gate.release()

                try:
                    await wsclient.subscribe(
                        self.url,
                        tenant.token,
                        variables,
                        on_next_of(i),
                        query=QUERY,
                        ready=ready,
                        stop=self.loop.stop_event,
                    )
                except Exception as error:
                    self.failures.append(f"{type(error).__name__}: {error}")
                finally:
                    ready()

            self.tasks.extend(asyncio.ensure_future(one(first + i)) for i in range(n))

        self.loop.spawn(many())

    def settle(self, tenants: list[seed.Tenant], timeout: float = 180) -> float:
        """Accept an event per tenant every second until every subscriber heard one; returns
        the seconds it took (the connections and subscriptions included)."""
        t0 = time.monotonic()
        while self.subscribed < len(self.heard) and time.monotonic() - t0 < timeout:
            time.sleep(0.2)  # handshakes first: warm-up traffic would slow them down
        while not all(self.heard):
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(
                    f"{self.heard.count(False)} subscribers heard nothing "
                    f"({self.subscribed} of {len(self.heard)} subscribed; ended: "
                    f"{dict(Counter(self.failures)) or 'none'})"
                )
            for tenant in tenants:
                _ingest(tenant)
            time.sleep(2)
        time.sleep(2)  # the warm-up events' last changes
        return time.monotonic() - t0

    def close(self) -> None:
        self.loop.close()


def run(ctx: Context) -> Section:
    section = Section(
        "fanout",
        f"{SUBSCRIBERS:,} WebSocket subscribers on one daphne: one account, and "
        f"{SPREAD_ACCOUNTS} accounts at {SPREAD_RATE} events/s",
    )
    fresh_state()
    with processes(ctx.log_dir) as procs:
        sink = procs.nginx(free_port())
        tenant = seed.tenant(1, sink.url, name="fanout")
        port = free_port()
        daphne = procs.daphne(port)
        procs.worker(8)
        section.commands += [
            f"daphne -b 127.0.0.1 -p {port} project.asgi:application",
            "python manage.py run_huey -w 8 -k thread",
        ]
        fleet = Fleet(f"ws://127.0.0.1:{port}/graphql/")

        def fan(events: int, expected: int) -> tuple[list[float], list[float], float]:
            latencies, last = [], []
            meter = CpuMeter({"daphne": daphne.tree})
            meter.start()
            for _ in range(events):
                result = _ingest(tenant)
                log_id = _log_id(tenant, result.event_id)
                deadline = time.monotonic() + EVENT_TIMEOUT
                while len(fleet.receipts.get(log_id, [])) < expected:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                got = fleet.receipts.get(log_id, [])
                latencies += got
                last.append(max(got) if got else float("nan"))
                time.sleep(0.5)
            meter.stop()
            return latencies, last, meter.used["daphne"] / max(events, 1)

        fleet.add(tenant, 1)
        fleet.settle([tenant])
        ref, _ref_last, ref_cpu = fan(REFERENCE_EVENTS, 1)
        log(f"1 subscriber: p99 {percentile(ref, 99):.0f} ms")
        fleet.add(tenant, SUBSCRIBERS - 1)
        connect_seconds = fleet.settle([tenant])
        connected = len(fleet.heard)
        log(f"{connected} subscribers in {connect_seconds:.0f} s")
        idle = CpuMeter({"daphne": daphne.tree})
        idle.start()
        # The sockets' and streams' own upkeep (re-checks, timers), sampled as it runs.
        idle_spy = profiling.py_spy(
            daphne.pid, IDLE_SECONDS, ctx.log_dir / "py-spy-idle.txt", gil=True
        )
        idle.stop()
        idle_cpu = idle.used["daphne"] / IDLE_SECONDS
        spy: list[str | None] = [None]
        spying = threading.Thread(
            target=lambda: spy.__setitem__(
                0,
                profiling.py_spy(
                    daphne.pid, PY_SPY_SECONDS, ctx.log_dir / "py-spy-daphne.txt", gil=True
                ),
            )
        )
        spying.start()
        many, last, cpu = fan(EVENTS, connected)
        spying.join()
        log(f"{connected} subscribers: p99 {percentile(many, 99):.0f} ms")
        messages = fleet.messages
        fleet.close()

    spread = _spread(ctx, section)

    p99, p99_ref = percentile(many, 99), percentile(ref, 99)
    per_subscriber = cpu / 3 / connected * 1e3  # ms per subscriber per status change
    section.row(
        f"subscribers connected ({SUBSCRIBERS:,} asked), all heard a warm-up event",
        f"{connected:,}",
        f"in {connect_seconds:.0f} s",
    )
    section.row(
        "one account: status change → receipt p50",
        f"{fmt(percentile(many, 50), 1)} ms",
        f"1 subscriber {fmt(percentile(ref, 50), 1)} ms",
        ratio(percentile(many, 50), percentile(ref, 50)),
    )
    section.row(
        "one account: status change → receipt p99",
        f"{fmt(p99, 1)} ms",
        f"1 subscriber {fmt(p99_ref, 1)} ms",
        ratio(p99, p99_ref),
        f"≤ {TARGET_P99_MS:.0f} ms",
        "met" if p99 <= TARGET_P99_MS else "MISSED",
    )
    section.row(
        f"daphne CPU while nothing changes, {connected:,} subscribers",
        f"{fmt(idle_cpu * 1e3)} ms per second",
    )
    section.row(
        "last subscriber served, per event (median)",
        f"{fmt(statistics.median(last), 0)} ms" if last else "n/a",
    )
    section.row(
        "daphne CPU per status change fanned out",
        f"{fmt(cpu / 3 * 1e3)} ms",
        f"1 subscriber {fmt(ref_cpu / 3 * 1e3)} ms",
        ratio(cpu, ref_cpu),
    )
    section.row(
        "daphne CPU per subscriber per status change",
        f"{fmt(per_subscriber, 3)} ms",
        "",
        "",
        f"≤ {TARGET_CPU_MS:.0f} ms",
        "met" if per_subscriber <= TARGET_CPU_MS else "MISSED",
    )
    s99 = percentile(spread["latencies"], 99)
    section.row(
        f"{SPREAD_ACCOUNTS} accounts × {SUBSCRIBERS // SPREAD_ACCOUNTS} subscribers, "
        f"{SPREAD_RATE} events/s: receipt p50",
        f"{fmt(percentile(spread['latencies'], 50), 1)} ms",
        f"1 subscriber {fmt(percentile(ref, 50), 1)} ms",
        ratio(percentile(spread["latencies"], 50), percentile(ref, 50)),
    )
    section.row(
        f"{SPREAD_ACCOUNTS} accounts, {SPREAD_RATE} events/s: receipt p99",
        f"{fmt(s99, 1)} ms",
        f"1 subscriber {fmt(p99_ref, 1)} ms",
        ratio(s99, p99_ref),
        f"≤ {TARGET_SPREAD_P99_MS:.0f} ms",
        "met"
        if s99 <= TARGET_SPREAD_P99_MS and spread["received"] == spread["expected"]
        else "MISSED",
    )
    section.row(
        f"{SPREAD_ACCOUNTS} accounts: receipts",
        f"{spread['received']:,} of {spread['expected']:,}",
        f"daphne CPU {fmt(spread['cpu_per_event'] * 1e3, 1)} ms per event",
    )
    if spy[0]:
        section.details.append(("py-spy of daphne during the one-account fan-out", spy[0]))
    if idle_spy:
        section.details.append(("py-spy of daphne while nothing changes", idle_spy))
    if spread["spy"]:
        section.details.append(
            (
                f"py-spy of daphne, {SPREAD_ACCOUNTS} accounts at {SPREAD_RATE} events/s",
                spread["spy"],
            )
        )
    expected = EVENTS * connected
    section.notes.append(
        f"One account: {EVENTS} events, one at a time, each waited for until every "
        f"subscriber had its SUCCESS (at most {EVENT_TIMEOUT:.0f} s): {len(many):,} of "
        f"{expected:,} receipts arrived; every event makes 3 status changes (queued, sending, "
        f"success) and each reaches every subscriber ({messages:,} `next` messages in all, the "
        "warm-up included). Latency is arrival time minus processedTimestamp of the SUCCESS "
        "(same clock). The clients run in the bench process on the same 2 cores."
    )
    section.notes.append(
        f"{SPREAD_ACCOUNTS} accounts: a fresh daphne and worker; {SUBSCRIBERS:,} subscribers, "
        f"{SUBSCRIBERS // SPREAD_ACCOUNTS} per account; {SPREAD_RATE} events/s for "
        f"{SPREAD_SECONDS} s accepted round-robin over the accounts (open loop, "
        "`tasks.event_accept` in the bench process); each SUCCESS reaches the account's "
        "subscribers."
    )
    return section


def _spread(ctx: Context, section: Section) -> dict[str, Any]:
    """1,000 subscribers over SPREAD_ACCOUNTS accounts while SPREAD_RATE events/s flow."""
    fresh_state()
    with processes(ctx.log_dir) as procs:
        sink = procs.nginx(free_port())
        tenants = [seed.tenant(1, sink.url, name=f"spread {i}") for i in range(SPREAD_ACCOUNTS)]
        port = free_port()
        # Each user has SUBSCRIBERS // SPREAD_ACCOUNTS sockets here: the default limit, not the
        # one-account case's 5,000 (a socket's slot is taken by scanning the user's slots).
        daphne = procs.daphne(port, env=child_env(WS_MAX_CONNECTIONS_PER_USER="20"))
        procs.worker(8)
        fleet = Fleet(f"ws://127.0.0.1:{port}/graphql/")
        for tenant in tenants:
            fleet.add(tenant, SUBSCRIBERS // SPREAD_ACCOUNTS)
        fleet.settle(tenants)
        fleet.receipts.clear()
        fleet.arrivals.clear()
        meter = CpuMeter({"daphne": daphne.tree})
        meter.start()
        spy: list[str | None] = [None]
        spying = threading.Thread(
            target=lambda: spy.__setitem__(
                0,
                profiling.py_spy(
                    daphne.pid,
                    min(PY_SPY_SECONDS, SPREAD_SECONDS),
                    ctx.log_dir / "py-spy-spread.txt",
                    gil=True,
                ),
            )
        )
        spying.start()
        count = SPREAD_RATE * SPREAD_SECONDS
        event_ids = []
        t0 = time.time() + 0.1
        for i in range(count):
            delay = t0 + i / SPREAD_RATE - time.time()
            if delay > 0:
                time.sleep(delay)
            event_ids.append(_ingest(tenants[i % len(tenants)]).event_id)
        time.sleep(5)  # the last deliveries and receipts
        meter.stop()
        spying.join()
        log_ids = _log_ids(event_ids)
        latencies = [ms for log_id in log_ids for ms in fleet.receipts.get(log_id, [])]
        fleet.close()
    per_account = SUBSCRIBERS // SPREAD_ACCOUNTS
    log(f"spread: p99 {percentile(latencies, 99):.0f} ms, {len(latencies)} receipts")
    seconds = _by_second(fleet.arrivals, t0)
    log(
        "spread, receipts by second of arrival: "
        + ", ".join(
            f"+{s}s n={len(v)} p99={percentile(v, 99):.0f}" for s, v in sorted(seconds.items())
        )
    )
    return {
        "latencies": latencies,
        "received": len(latencies),
        "expected": len(event_ids) * per_account,
        "cpu_per_event": meter.used["daphne"] / max(count, 1),
        "spy": spy[0],
    }


def _by_second(arrivals: list[tuple[float, float]], t0: float) -> dict[int, list[float]]:
    seconds: dict[int, list[float]] = {}
    for arrival, latency in arrivals:
        seconds.setdefault(int(arrival - t0), []).append(latency)
    return seconds


def _log_ids(event_ids: list[str]) -> list[int]:
    from delivery.models import DeliveryLog

    found = DeliveryLog.objects.filter(event__event_id__in=event_ids)
    return list(found.values_list("pk", flat=True))


def _ingest(tenant: seed.Tenant) -> "IngestResult":
    """What incoming_data runs for one event: store it, then publish and wake its lanes."""
    from delivery import tasks

    return tasks.event_accept(
        account_id=tenant.account.pk,
        event_id=None,
        payload=PAYLOAD,
        size=len(BODY),
        body=BODY.encode(),
    )


def _log_id(tenant: seed.Tenant, event_id: str) -> int:
    """The event's log, once a worker has fanned the event out."""
    from delivery.models import DeliveryLog

    logs = DeliveryLog.objects.filter(account=tenant.account, event__event_id=event_id)
    deadline = time.monotonic() + EVENT_TIMEOUT
    while (log_id := logs.values_list("pk", flat=True).first()) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"event {event_id} not fanned out after {EVENT_TIMEOUT} s")
        time.sleep(0.005)
    return int(log_id)

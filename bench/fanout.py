"""Section 6 — fan-out of live updates: 1,000 concurrent graphql-transport-ws subscribers of
`logUpdates(accountId)` on ONE daphne process; one run_huey worker delivers to nginx. Events
are ingested one at a time (through the service, from the bench process), and each
subscriber's receipt of SUCCESS is compared with the log's processedTimestamp (set just before
the SUCCESS commit): status change → receipt. Reference: the same with one subscriber."""

import statistics
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING

from bench import profiling, seed, wsclient
from bench.common import (
    BODY,
    PAYLOAD,
    Context,
    CpuMeter,
    Section,
    fmt,
    free_port,
    fresh_state,
    log,
    percentile,
    processes,
    ratio,
)

SUBSCRIBERS = 1000
CONNECT_CONCURRENCY = 50
EVENTS = 2
REFERENCE_EVENTS = 2
EVENT_TIMEOUT = 40.0
PY_SPY_SECONDS = 10
if TYPE_CHECKING:
    from delivery.ingest import IngestResult

QUERY = "subscription ($id: ID) { logUpdates(accountId: $id) { id status processedTimestamp } }"


def run(ctx: Context) -> Section:
    section = Section("fanout", f"{SUBSCRIBERS:,} WebSocket subscribers on one daphne")
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
        url = f"ws://127.0.0.1:{port}/graphql/"
        variables = {"id": str(tenant.account.pk)}
        # receipts[log_id] = [(arrival, processedTimestamp epoch), ...] for SUCCESS
        receipts: dict[int, list[float]] = {}
        messages = [0]

        def on_next(data: dict[str, object], arrival: float) -> None:
            messages[0] += 1
            update = data.get("logUpdates") or {}
            if isinstance(update, dict) and update.get("status") == "SUCCESS":
                done = datetime.fromisoformat(str(update["processedTimestamp"])).timestamp()
                receipts.setdefault(int(str(update["id"])), []).append((arrival - done) * 1e3)

        loop = wsclient.LoopThread()
        tasks: list[object] = []  # the subscriber tasks (kept referenced)

        def connect(n: int) -> float:
            t0 = time.monotonic()
            target = wsclient.group_size(tenant.account.pk) + n

            async def many() -> None:
                import asyncio

                gate = asyncio.Semaphore(CONNECT_CONCURRENCY)  # handshakes in flight

                async def one() -> None:
                    await gate.acquire()
                    held = [True]

                    def ready() -> None:
                        if held[0]:
                            held[0] = False
                            gate.release()

                    try:
                        await wsclient.subscribe(
                            url,
                            tenant.token,
                            variables,
                            on_next,
                            query=QUERY,
                            ready=ready,
                            stop=loop.stop_event,
                        )
                    finally:
                        ready()

                tasks.extend(asyncio.ensure_future(one()) for _ in range(n))

            loop.spawn(many())
            deadline = time.monotonic() + 120
            while wsclient.group_size(tenant.account.pk) < target and time.monotonic() < deadline:
                time.sleep(0.2)
            return time.monotonic() - t0

        def fan(events: int, expected: int) -> tuple[list[float], list[float], float]:
            latencies, last = [], []
            meter = CpuMeter({"daphne": daphne.tree})
            meter.start()
            for _ in range(events):
                result = _ingest(tenant)
                log_id = _log_id(tenant, result.event_id)
                deadline = time.monotonic() + EVENT_TIMEOUT
                while len(receipts.get(log_id, [])) < expected and time.monotonic() < deadline:
                    time.sleep(0.05)
                got = receipts.get(log_id, [])
                latencies += got
                last.append(max(got) if got else float("nan"))
                time.sleep(0.5)
            meter.stop()
            return latencies, last, meter.used["daphne"] / max(events, 1)

        connect(1)
        ref, _ref_last, ref_cpu = fan(REFERENCE_EVENTS, 1)
        log(f"1 subscriber: p99 {percentile(ref, 99):.0f} ms")
        connect_seconds = connect(SUBSCRIBERS - 1)
        connected = wsclient.group_size(tenant.account.pk)
        log(f"{connected} subscribers in {connect_seconds:.0f} s")
        spy: list[str | None] = [None]
        spying = threading.Thread(
            target=lambda: spy.__setitem__(
                0, profiling.py_spy(daphne.pid, PY_SPY_SECONDS, ctx.log_dir / "py-spy-daphne.txt")
            )
        )
        spying.start()
        many, last, cpu = fan(EVENTS, connected)
        spying.join()
        log(f"{connected} subscribers: p99 {percentile(many, 99):.0f} ms")
        loop.close()

    p99, p99_ref = percentile(many, 99), percentile(ref, 99)
    section.row(
        f"subscribers connected ({SUBSCRIBERS:,} asked)",
        f"{connected:,}",
        f"in {connect_seconds:.0f} s",
    )
    section.row(
        "status change → receipt p50",
        f"{fmt(percentile(many, 50), 1)} ms",
        f"1 subscriber {fmt(percentile(ref, 50), 1)} ms",
        ratio(percentile(many, 50), percentile(ref, 50)),
    )
    section.row(
        "status change → receipt p99",
        f"{fmt(p99, 1)} ms",
        f"1 subscriber {fmt(p99_ref, 1)} ms",
        ratio(p99, p99_ref),
        "none set",
        "(see ratio)",
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
    if spy[0]:
        section.details.append(("py-spy of daphne during the fan-out", spy[0]))
    expected = EVENTS * connected
    section.notes.append(
        f"{EVENTS} events, one at a time, each waited for until every subscriber had its "
        f"SUCCESS (at most {EVENT_TIMEOUT:.0f} s): {len(many):,} of {expected:,} receipts "
        f"arrived; every event makes 3 status changes (queued, sending, success) and each "
        f"reaches every subscriber ({messages[0]:,} `next` messages in all). Latency is "
        "arrival time minus processedTimestamp of the SUCCESS (same clock). The client runs "
        "in the bench process on the same 2 cores."
    )
    return section


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

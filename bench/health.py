"""Section — health: what destination health costs per delivery, and how soon a destination
that comes back after an outage gets its backlog.

1. Cost, paired: the engine in this process, blocks of 500 deliveries (10 destinations,
   nginx sink) alternating between DESTINATION_HEALTH=0 (no health record: the engine
   without breaker, figures or limits) and the defaults plus a rate limit on every
   destination that never binds (1,000,000/s, so the limiter's round trips are paid): CPU of
   this process, PostgreSQL and Redis per delivery in 16 blocks of each (BENCH_HEALTH_PAIRS).
   Adjacent blocks run within a second of each other, so the host's speed (which moves by up
   to 2x between runs a minute apart here) cancels out of each pair's ratio; the verdict is
   on the median of the pairs' ratios (a block the host slowed moves it least). Target:
   on ≤ 1.10 x off. Then, for the whole process picture, one `run_huey -w 16` draining 5,000 queued
   deliveries per run, in 5 pairs of runs (BENCH_HEALTH_WORKER_PAIRS), off/on then on/off in
   turn: the cost with 16 threads sharing the process, which the paired blocks do not see;
   the verdict, again, on the median of the pairs' ratios (same target).
2. Recovery: a receiver that answers 500 for 10 minutes while 10 events/s arrive for it, then
   200, run 30 times faster (20 s; breaker cool-down 1 s instead of 30 s, at most 10 s
   instead of 300 s; the retry schedule likewise): the time from its recovery to its first
   success (the breaker's probe) and to its whole backlog delivered; and the same at the
   default settings, from those figures."""

import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from django.test import override_settings

from bench import delivery, seed
from bench.common import (
    Context,
    CpuMeter,
    Section,
    child_env,
    count_logs,
    fmt,
    free_port,
    fresh_state,
    knob,
    log,
    processes,
    ratio,
    service_groups,
    verdict,
)
from delivery import tasks
from delivery.models import Destination

LOGS = knob("BENCH_HEALTH_LOGS", 5_000)
WORKER_PAIRS = knob("BENCH_HEALTH_WORKER_PAIRS", 5)  # pairs of worker runs, alternating
PAIRS = knob("BENCH_HEALTH_PAIRS", 16)  # paired in-process blocks of each mode
BLOCK = 500  # deliveries per block (50 per destination)
DESTINATIONS = 10
THREADS = 16
TARGET = 1.10
SCALE = 30  # the recovery scenario runs this many times faster than real time
OUTAGE_SECONDS = 600  # at the default settings
EVENT_RATE = 10  # events per second during the outage
SCALED = {
    "DESTINATION_BREAKER_COOLDOWN_SECONDS": "1",
    "DESTINATION_BREAKER_MAX_COOLDOWN_SECONDS": "10",
    "DELIVERY_RETRY_SCHEDULE": "1,1,4,20,60,120,360,720",
}


def run(ctx: Context) -> Section:
    section = Section("health", "breaker and limits: CPU per delivery on vs off; recovery")
    _paired_cost(ctx, section)
    _cost(ctx, section)
    _recovery(ctx, section)
    return section


def _paired_cost(ctx: Context, section: Section) -> None:
    """On vs off in alternating blocks of this process's engine (module docstring, 1)."""
    fresh_state()
    used: dict[str, dict[str, float]] = {
        m: {"engine": 0.0, "postgres": 0.0, "redis": 0.0} for m in ("off", "on")
    }
    counts = {"off": 0, "on": 0}
    pair_ratios: list[float] = []
    with processes(ctx.log_dir) as procs:
        sink = procs.nginx(free_port())
        tenants = {
            mode: seed.tenant(DESTINATIONS, sink.url, name=f"paired-{mode}")
            for mode in ("off", "on")
        }
        Destination.objects.filter(account=tenants["on"].account).update(rate_limit=1_000_000)
        for pair in range(PAIRS + 1):  # the first pair warms up (connections, caches)
            block: dict[str, float] = {}
            for mode in ("off", "on") if pair % 2 else ("on", "off"):
                tenant = tenants[mode]
                seed.queued_logs(tenant, BLOCK)
                before = count_logs("success", accounts=[tenant.account.pk])
                with override_settings(DESTINATION_HEALTH=mode == "on"):
                    meter = CpuMeter(service_groups())
                    meter.start()
                    cpu0 = time.process_time()
                    for destination in tenant.destinations:
                        delivery._drain_lane(destination.pk)
                    own = time.process_time() - cpu0
                    meter.stop()
                done = count_logs("success", accounts=[tenant.account.pk]) - before
                if done != BLOCK:
                    raise RuntimeError(f"health paired {mode}: {done} of {BLOCK} delivered")
                block[mode] = own + meter.used["postgres"] + meter.used["redis"]
                if pair:
                    counts[mode] += done
                    used[mode]["engine"] += own
                    used[mode]["postgres"] += meter.used["postgres"]
                    used[mode]["redis"] += meter.used["redis"]
            if pair:
                pair_ratios.append(block["on"] / block["off"])

    def per(mode: str, key: str) -> float:
        part = used[mode].values() if key == "total" else [used[mode][key]]
        return sum(part) * 1e6 / counts[mode]

    off, on = per("off", "total"), per("on", "total")
    middle = statistics.median(pair_ratios)
    log(f"health paired: on {on:.0f} µs, off {off:.0f} µs per delivery; pairs {pair_ratios}")
    section.row(
        "CPU per delivery, breaker + limits on (paired blocks)",
        f"{fmt(on)} µs",
        f"off {fmt(off)} µs",
        f"{middle:.2f}× (median of pairs)",
        f"≤ {TARGET:.2f}× off",
        verdict(middle <= TARGET, f"{middle:.2f}x"),
    )
    for key, label in (
        ("engine", "the engine (this process)"),
        ("postgres", "PostgreSQL"),
        ("redis", "Redis"),
    ):
        section.row(
            f"  of which {label}",
            f"{fmt(per('on', key))} µs",
            f"off {fmt(per('off', key))} µs",
            ratio(per("on", key), per("off", key)),
        )
    section.notes.append(
        f"Paired cost: the engine in the bench process (`engine.lane_run` per destination, "
        f"as tasks.lane runs it, one lane at a time) over {PAIRS} pairs of blocks of {BLOCK} "
        f"fresh queued logs on {DESTINATIONS} destinations, each pair 'off' then 'on' or "
        "'on' then 'off' in turn, after one pair of warm-up; 'off' is DESTINATION_HEALTH=0, "
        "'on' the defaults with every destination's rateLimit at 1,000,000/s. CPU of this "
        "process, PostgreSQL and Redis. The ratio of each pair: "
        + ", ".join(f"{r:.2f}" for r in pair_ratios)
        + f" (median {middle:.2f}; all blocks summed {on / off:.2f})."
    )


def _cost(ctx: Context, section: Section) -> None:
    """On vs off in alternating worker runs, paired like the blocks (module docstring, 1)."""
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    rates: dict[str, list[float]] = {"off": [], "on": []}
    pair_ratios: list[float] = []
    for pair in range(WORKER_PAIRS):
        for mode in ("off", "on") if pair % 2 == 0 else ("on", "off"):
            fresh_state()
            with processes(ctx.log_dir) as procs:
                sink = procs.nginx(free_port())
                tenant = seed.tenant(DESTINATIONS, sink.url, name=f"health-{mode}")
                if mode == "on":
                    Destination.objects.filter(account=tenant.account).update(rate_limit=1_000_000)
                ids = seed.queued_logs(tenant, LOGS)
                seed.enqueue(tenant, ids)
                env = child_env(DESTINATION_HEALTH="0") if mode == "off" else None
                worker = procs.worker(THREADS, env=env)
                drained, elapsed, cpu, _sql = delivery._drain(tenant, worker, sink, 30, total=LOGS)
                worker.stop()
            total = cpu["worker"] + cpu["postgres"] + cpu["redis"]
            runs[mode].append({**cpu, "total": total})
            rates[mode].append(drained / elapsed if elapsed else 0.0)
            log(
                f"health {mode}: {drained} deliveries at {rates[mode][-1]:.0f}/s, worker "
                f"{cpu['worker']:.0f} + pg {cpu['postgres']:.0f} + redis {cpu['redis']:.0f} µs "
                "each"
            )
        pair_ratios.append(runs["on"][-1]["total"] / runs["off"][-1]["total"])

    def mean(mode: str, key: str) -> float:
        """The median of the mode's runs (the host's speed moves between runs)."""
        return statistics.median(r[key] for r in runs[mode])

    off, on = mean("off", "total"), mean("on", "total")
    middle = statistics.median(pair_ratios)
    section.row(
        "CPU per delivery, breaker + limits on (paired worker runs)",
        f"{fmt(on)} µs",
        f"off {fmt(off)} µs",
        f"{middle:.2f}× (median of pairs)",
        f"≤ {TARGET:.2f}× off",
        verdict(middle <= TARGET, f"{middle:.2f}x"),
    )
    for key, label in (("worker", "worker"), ("postgres", "PostgreSQL"), ("redis", "Redis")):
        section.row(
            f"  of which {label}",
            f"{fmt(mean('on', key))} µs",
            f"off {fmt(mean('off', key))} µs",
            ratio(mean("on", key), mean("off", key)),
        )
    section.row(
        "deliveries/s, one worker",
        f"{fmt(statistics.median(rates['on']))} /s",
        f"off {fmt(statistics.median(rates['off']))} /s",
        ratio(statistics.median(rates["on"]), statistics.median(rates["off"])),
    )
    section.notes.append(
        f"Worker cost: {LOGS:,} queued logs over {DESTINATIONS} destinations drained by one "
        f"`run_huey -w {THREADS} -k thread` per run, {WORKER_PAIRS} pairs of runs (off then "
        "on, on then off, in turn; medians of the runs in the rows, the verdict on the median "
        "of the pairs' ratios: "
        + ", ".join(f"{r:.2f}" for r in pair_ratios)
        + "; every run's µs per delivery: "
        + "; ".join(f"{m} " + ", ".join(f"{r['total']:,.0f}" for r in runs[m]) for m in runs)
        + "). 'off' is DESTINATION_HEALTH=0, 'on' the defaults (breaker and figures: one "
        "Redis script call at each lane start and per group of results) with every "
        "destination's rateLimit at 1,000,000/s (one more script per reservation of a "
        "batch's request slots, in the round trip that renews the lane's slot). CPU of the "
        "worker, PostgreSQL and Redis."
    )


class _Receiver:
    """An HTTP receiver that answers 500 until `recover()`, then 200; records the time of
    each answer of 200 (monotonic)."""

    def __init__(self) -> None:
        self.down = True
        self.successes: list[float] = []
        self.failures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code = 500 if receiver.down else 200
                if code == 200:
                    receiver.successes.append(time.monotonic())
                else:
                    receiver.failures += 1
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _recovery(ctx: Context, section: Section) -> None:
    outage = OUTAGE_SECONDS / SCALE
    fresh_state()
    receiver = _Receiver()
    try:
        with processes(ctx.log_dir) as procs:
            tenant = seed.tenant(1, receiver.url, name="health-recovery")
            procs.worker(THREADS, env=child_env(**SCALED))
            start = time.monotonic()
            posted = 0
            while (now := time.monotonic()) < start + outage:
                due = int((now - start) * EVENT_RATE) + 1
                while posted < due:
                    tasks.event_accept(
                        account_id=tenant.account.pk,
                        event_id=f"outage-{posted}",
                        payload={"n": posted},
                        size=10,
                    )
                    posted += 1
                time.sleep(0.02)
            receiver.down = False
            recovered = time.monotonic()
            deadline = recovered + 4 * SCALE
            accounts = [tenant.account.pk]
            while count_logs("success", accounts=accounts) < posted:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            delivered = count_logs("success", accounts=accounts)
    finally:
        receiver.close()
    first = receiver.successes[0] - recovered if receiver.successes else float("nan")
    last = receiver.successes[-1] - recovered if receiver.successes else float("nan")
    drain = last - first
    log(
        f"recovery: {posted} events during {outage:.0f} s of 500s ({receiver.failures} tries "
        f"failed); first success {first:.1f} s after recovery, all {delivered} after {last:.1f} s"
    )
    section.row(
        f"recovery, {SCALE}x faster: first success after the receiver is back",
        f"{fmt(first, 1)} s",
        f"outage {fmt(outage, 0)} s",
    )
    section.row(
        f"recovery, {SCALE}x faster: whole backlog ({posted:,} events) delivered",
        f"{fmt(last, 1)} s",
        f"{receiver.failures} failed tries during the outage",
    )
    # Unscaled: the probe waits are SCALE times longer; the backlog SCALE times bigger, at
    # the drain rate measured here.
    rate = (delivered - 1) / drain if drain > 0 else float("nan")
    section.row(
        "recovery at the defaults (10 min of 500s, 10 events/s): whole backlog",
        f"{fmt(first * SCALE + posted * SCALE / rate, 0)} s",
        f"probe wait {fmt(first * SCALE, 0)} s + {posted * SCALE:,} events at {fmt(rate)}/s",
        "",
        "report",
    )
    section.notes.append(
        f"Recovery: one destination, one `run_huey -w {THREADS}`, {EVENT_RATE} events/s "
        f"accepted in the bench process for {outage:.0f} s ({OUTAGE_SECONDS} s / {SCALE}) while "
        f"the receiver answered 500, then 200; the worker ran with {SCALED}. The breaker's "
        "probes come after 1, 2, 4, 8, 16 s of cool-down (30, 60, 120, 240, 480 s at the "
        "defaults), so the wait for the first success after recovery depends on where the "
        "recovery falls between two probes (at most the longest cool-down, 15 min). The "
        "default-settings figure scales the probe wait by the same factor and delivers the "
        f"{SCALE}x larger backlog at the rate measured here (one lane: maxInFlight 1, in order)."
    )

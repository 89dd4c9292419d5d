"""Section — ladder: the highest open-loop rate the production topology sustains, with 1 and
with 10 destinations per event. Steps of increasing rate (100, 200, 400, 700, 1,000, 1,400,
2,000 events/s), 30 s each, posted through nginx by the latency section's open-loop sender
to an nginx sink that stamps every arrival; a step is sustained when every scheduled event was
sent and answered 202, every delivery of every accepted event reached the sink (nothing lost),
and accept -> sink p99 ≤ 1 s. The ladder stops at the first step that is not sustained.

BENCH_LADDER_SECONDS shortens the steps and BENCH_LADDER_RATES replaces them, for trials."""

import time
from dataclasses import dataclass

from bench import latency, seed
from bench.common import (
    Context,
    CpuMeter,
    Nginx,
    Section,
    Topology,
    count_logs,
    fmt,
    free_port,
    fresh_state,
    knob,
    knob_list,
    log,
    percentile,
    processes,
    service_groups,
)
from delivery.models import UNFINISHED

RATES = knob_list("BENCH_LADDER_RATES", [100, 200, 400, 700, 1000, 1400, 2000])
SECONDS = knob("BENCH_LADDER_SECONDS", 30)
DESTINATIONS = (1, 10)
SETTLE_SECONDS = 10.0
PAUSE_SECONDS = 2.0
BACKLOG_SECONDS = 60.0
TARGET_P99_MS = 1000.0
CPU_KEYS = ("gunicorn", "run_huey", "postgres", "redis", "nginx", "sink")


@dataclass
class Step:
    destinations: int
    rate: int
    scheduled: int
    skipped: int  # more than latency.MAX_LAG_SECONDS behind schedule: never sent
    accepted: int
    answer_p99_ms: float  # POST -> 202
    sink_p50_ms: float
    sink_p99_ms: float
    sink_max_ms: float
    missing: int  # deliveries of accepted events not at the sink SETTLE_SECONDS after the end
    cpu_us: dict[str, float]  # per accepted event, by process group
    seconds: float  # sending + settling

    @property
    def sustained(self) -> bool:
        return (
            self.accepted == self.scheduled
            and self.missing == 0
            and self.sink_p99_ms <= TARGET_P99_MS
        )

    def why(self) -> str:
        reasons = []
        if self.skipped:
            reasons.append(
                f"{self.skipped:,} not sent (server > {latency.MAX_LAG_SECONDS:.0f} s behind)"
            )
        if self.scheduled - self.skipped - self.accepted:
            reasons.append(f"{self.scheduled - self.skipped - self.accepted:,} not 202")
        if self.missing:
            reasons.append(f"{self.missing:,} deliveries lost or late")
        if not self.sink_p99_ms <= TARGET_P99_MS:
            reasons.append(f"p99 {fmt(self.sink_p99_ms)} ms")
        return ", ".join(reasons)


def run(ctx: Context) -> Section:
    section = Section("ladder", "highest open-loop rate sustained with sink p99 ≤ 1 s, none lost")
    fresh_state()
    steps: list[Step] = []
    with processes(ctx.log_dir) as procs:
        sink = procs.nginx(free_port(), access_log=True)
        tenants = {n: seed.tenant(n, sink.url, name=f"ladder-{n}") for n in DESTINATIONS}
        topology = procs.prod()
        section.commands += [
            topology.command(),
            f"nginx (return 200; access_log '$msec $http_webhook_id') on 127.0.0.1:{sink.port}",
        ]
        for n, tenant in tenants.items():
            latency.send_open_loop(topology.port, tenant.app_secret, f"warm{n}", 50, 1.0)
            for rate in RATES:
                time.sleep(PAUSE_SECONDS)
                step = _step(topology, sink, tenant, rate)
                steps.append(step)
                log(
                    f"{n} destination(s), {rate}/s: accepted {step.accepted:,} of "
                    f"{step.scheduled:,}, sink p50 {fmt(step.sink_p50_ms)} / p99 "
                    f"{fmt(step.sink_p99_ms)} ms, missing {step.missing:,}"
                    + ("" if step.sustained else f"  -> not sustained: {step.why()}")
                )
                if not step.sustained:
                    _settle(BACKLOG_SECONDS)  # the next ladder starts without this backlog
                    break
    _report(section, steps, topology)
    return section


def _settle(seconds: float) -> None:
    """Wait (bounded) until no delivery is unfinished."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not sum(count_logs(status) for status in UNFINISHED):
            return
        time.sleep(0.5)
    log(f"deliveries still unfinished after {seconds:.0f} s; going on")


def _step(topology: Topology, sink: Nginx, tenant: seed.Tenant, rate: int) -> Step:
    n = len(tenant.destinations)
    prefix = f"l{n}x{rate}"
    groups = topology.cpu_groups()
    meter = CpuMeter(
        {
            **{k: groups[k] for k in ("gunicorn", "run_huey", "nginx")},
            **service_groups(),
            "sink": sink.proc.tree,  # type: ignore[union-attr]
        }
    )
    meter.start()
    sent = latency.send_open_loop(topology.port, tenant.app_secret, prefix, rate, SECONDS)
    accepted = {k: s for k, s in sent.items() if s.status == 202}
    delivered = latency.await_deliveries(tenant, prefix, accepted, sink, SETTLE_SECONDS)
    meter.stop()
    to_sink, _after_202 = latency.sink_latencies(accepted, delivered)
    answers = [(s.answered - s.scheduled) * 1e3 for s in accepted.values()]
    return Step(
        destinations=n,
        rate=rate,
        scheduled=len(sent),
        skipped=sum(1 for s in sent.values() if not s.sent),
        accepted=len(accepted),
        answer_p99_ms=percentile(answers, 99),
        sink_p50_ms=percentile(to_sink, 50),
        sink_p99_ms=percentile(to_sink, 99),
        sink_max_ms=percentile(to_sink, 100),
        missing=delivered.missing,
        cpu_us=meter.per(len(accepted)),
        seconds=meter.wall,
    )


def _report(section: Section, steps: list[Step], topology: Topology) -> None:
    for n in DESTINATIONS:
        mine = [s for s in steps if s.destinations == n]
        held = [s for s in mine if s.sustained]
        failed = next((s for s in mine if not s.sustained), None)
        best = held[-1] if held else None
        section.row(
            f"highest rate sustained, {n} destination{'s' if n > 1 else ''}",
            f"{best.rate:,} events/s" if best else "none",
            f"next step {failed.rate:,}/s: {failed.why()}"
            if failed
            else f"top of the ladder ({RATES[-1]:,}/s) held",
            "",
            f"report (sink p99 ≤ {TARGET_P99_MS / 1e3:.0f} s, 0 lost)",
            "",
        )
        if best:
            section.row(
                f"  at {best.rate:,}/s: accept → sink p50 / p99",
                f"{fmt(best.sink_p50_ms)} / {fmt(best.sink_p99_ms)} ms",
                f"CPU {fmt(sum(best.cpu_us.values()))} µs per event",
            )
    header = (
        f"{'dest':>4} {'rate/s':>7} {'sent':>7} {'202':>7} {'202 p99':>8} {'sink p50':>8} "
        f"{'p99':>8} {'max':>8} {'lost':>6}  "
        + " ".join(f"{k:>8}" for k in CPU_KEYS)
        + "  (ms; CPU µs per event)"
    )
    lines = [header]
    for s in steps:
        lines.append(
            f"{s.destinations:4} {s.rate:7,} {s.scheduled - s.skipped:7,} {s.accepted:7,} "
            f"{s.answer_p99_ms:8.0f} {s.sink_p50_ms:8.0f} {s.sink_p99_ms:8.0f} "
            f"{s.sink_max_ms:8.0f} {s.missing:6,}  "
            + " ".join(f"{s.cpu_us.get(k, 0.0):8.0f}" for k in CPU_KEYS)
            + ("" if s.sustained else "  not sustained")
        )
    section.details.append(
        (
            f"Every step ({SECONDS} s each, then up to {SETTLE_SECONDS:.0f} s to settle)",
            "\n".join(lines),
        )
    )
    section.notes.append(
        f"Open loop from {latency.SENDERS} client threads (keep-alive, through nginx), each event "
        f"with its own CL-X-EVENT-ID; latency from the scheduled send to the first arrival at "
        f"the sink. Topology: {topology.describe()}. A step is not sustained when any event was "
        f"not sent or not answered 202, any delivery had not arrived {SETTLE_SECONDS:.0f} s "
        f"after the last send, or the sink p99 was above {TARGET_P99_MS:.0f} ms; the ladder "
        f"stops there. Rates: {', '.join(f'{r:,}' for r in RATES)} events/s."
    )

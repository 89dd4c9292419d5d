"""Section 1 — ingest: POST /server/incoming_data/ with a 1 KB JSON body, for accounts with 1, 10
and 50 active destinations, against a bare Django view on the same gunicorn.

The server is the production topology (deploy/prod.py, `make prod`) with NO run_huey worker:
only the accept path is measured (what it enqueues piles up in Redis DB 12 and is flushed
afterwards). wrk holds 32 keep-alive connections for 10 s per target (after a 1 s warm-up that
is not counted), through nginx (the production entry point; the targets are judged there) and
straight at gunicorn (what the proxy costs). Accepted events are counted in the database, not
only from wrk's status codes. CPU per event comes from /proc of gunicorn (master and workers),
nginx, PostgreSQL (the private cluster) and Redis (the shared server)."""

from dataclasses import dataclass

from bench import seed
from bench.common import (
    Context,
    CpuMeter,
    Section,
    Topology,
    WrkResult,
    child_env,
    flush_redis,
    fmt,
    fresh_state,
    knob,
    log,
    prod_topology,
    ratio,
    service_groups,
    verdict,
    wrk,
)
from delivery.models import Event

SECONDS = knob("BENCH_INGEST_SECONDS", 10)
WARMUP_SECONDS = 1
CONNECTIONS = 32
TARGET_EVENTS_PER_S = 1000.0
TARGET_SHARE_OF_BARE = 0.30
HEADLINE = "nginx → gunicorn"  # the path the targets are judged on
DIRECT = "gunicorn direct"
JUDGED = "10 destinations"


@dataclass
class Measure:
    path: str  # HEADLINE or DIRECT
    target: str
    wrk: WrkResult
    accepted: int  # events committed during the run (the bare view: requests answered 202)
    cpu_us: dict[str, float]  # per accepted event (bare view: per request), by process group

    @property
    def per_second(self) -> float:
        return self.accepted / self.wrk.seconds if self.wrk.seconds else 0.0


def run(ctx: Context) -> Section:
    section = Section("ingest", "POST /server/incoming_data/, 1 KB JSON, accept path only")
    fresh_state()
    # Destinations point at the discard port: no worker runs, nothing is delivered.
    tenants = {n: seed.tenant(n, "http://127.0.0.1:9", name=f"ingest-{n}") for n in (1, 10, 50)}
    targets: list[tuple[str, str, seed.Tenant | None]] = [
        ("bare view", "/bench/bare/", None),
        *[(_name(n), "/server/incoming_data/", t) for n, t in tenants.items()],
    ]
    measures: list[Measure] = []
    with prod_topology(ctx.log_dir, workers=0) as topology:
        section.commands.append(topology.command())
        runs = [(HEADLINE, topology.url, t) for t in targets]
        runs += [
            (DIRECT, topology.gunicorn_url, t) for t in targets if t[0] in ("bare view", JUDGED)
        ]
        for path_name, base, (target, path, tenant) in runs:
            measures.append(_measure(ctx, topology, path_name, base + path, target, tenant))
            flush_redis_queue()
    section.commands.insert(
        0,
        f"wrk -t1 -c{CONNECTIONS} -d{SECONDS}s --latency -s post.lua URL"
        "   # post.lua: POST, Content-Type: application/json, CL-X-TOKEN, 1 KB body",
    )
    _report(section, measures, topology)
    return section


def _name(destinations: int) -> str:
    return f"{destinations} destination{'s' if destinations > 1 else ''}"


def _measure(
    ctx: Context,
    topology: Topology,
    path_name: str,
    url: str,
    target: str,
    tenant: seed.Tenant | None,
) -> Measure:
    headers = {"CL-X-TOKEN": tenant.app_secret} if tenant else {}
    wrk(url, script_dir=ctx.log_dir, headers=headers, seconds=WARMUP_SECONDS)
    groups = topology.cpu_groups()
    meter = CpuMeter({"gunicorn": groups["gunicorn"], "nginx": groups["nginx"], **service_groups()})
    before = Event.objects.filter(account=tenant.account).count() if tenant else 0
    meter.start()
    result = wrk(url, script_dir=ctx.log_dir, headers=headers, seconds=SECONDS)
    meter.stop()
    if tenant:
        accepted = Event.objects.filter(account=tenant.account).count() - before
    else:
        accepted = result.requests - result.non_2xx
    m = Measure(path_name, target, result, accepted, meter.per(accepted))
    log(
        f"{path_name:18} {target:16} {result.rps:8.0f} req/s  "
        f"{m.per_second:8.0f} accepted/s  p50 {result.p50_ms:.1f} ms  "
        f"p99 {result.p99_ms:.1f} ms  gunicorn {m.cpu_us['gunicorn']:.0f} µs/event"
        + (f"  non-2xx {result.non_2xx}" if result.non_2xx else "")
        + (f"  {result.errors}" if result.errors else "")
    )
    return m


def flush_redis_queue() -> None:
    """Drop what the accept path enqueued and published (no worker runs in this section); the
    rows and tenants stay. The app-secret and destination caches go too and are refilled by
    the next warm-up."""
    flush_redis()


def _report(section: Section, measures: list[Measure], topology: Topology) -> None:
    by = {(m.path, m.target): m for m in measures}
    for path_name in (HEADLINE, DIRECT):
        bare = by[(path_name, "bare view")]
        section.row(f"{path_name}: bare view", f"{fmt(bare.wrk.rps)} req/s")
        for m in measures:
            if m.path != path_name or m.target == "bare view":
                continue
            share = m.per_second / bare.wrk.rps if bare.wrk.rps else 0.0
            target_text = verdict_text = ""
            if m.target == JUDGED and path_name == HEADLINE:
                target_text = f"≥ {TARGET_EVENTS_PER_S:,.0f}/s, ≥ {TARGET_SHARE_OF_BARE:.0%} bare"
                met = m.per_second >= TARGET_EVENTS_PER_S and share >= TARGET_SHARE_OF_BARE
                verdict_text = verdict(
                    met,
                    f"{m.per_second / TARGET_EVENTS_PER_S:.0%} of the rate, {share:.0%} of bare",
                )
            section.row(
                f"{path_name}: {m.target}",
                f"{fmt(m.per_second)} events/s",
                f"bare {fmt(bare.wrk.rps)} req/s",
                ratio(m.per_second, bare.wrk.rps),
                target_text,
                verdict_text,
            )
    judged = by[(HEADLINE, JUDGED)]
    cpu = judged.cpu_us
    section.row(
        f"CPU per event, {JUDGED}",
        f"gunicorn {fmt(cpu['gunicorn'])} µs",
        f"pg {fmt(cpu['postgres'])}, redis {fmt(cpu['redis'])}, nginx {fmt(cpu['nginx'])} µs",
    )
    lines = [
        f"{'path':18} {'target':16} {'req/s':>8} {'events/s':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'gunicorn':>8} {'pg':>6} {'redis':>6} {'nginx':>6}  "
        "(CPU µs per event; bare view: per request)"
    ]
    for m in measures:
        lines.append(
            f"{m.path:18} {m.target:16} {m.wrk.rps:8.0f} {m.per_second:8.0f} "
            f"{m.wrk.p50_ms:7.1f} {m.wrk.p99_ms:7.1f} {m.cpu_us['gunicorn']:8.0f} "
            f"{m.cpu_us['postgres']:6.0f} {m.cpu_us['redis']:6.0f} {m.cpu_us['nginx']:6.0f}"
            + (f"  non-2xx: {m.wrk.non_2xx}" if m.wrk.non_2xx else "")
            + (f"  {m.wrk.errors}" if m.wrk.errors else "")
        )
    section.details.append(
        (
            f"All runs ({CONNECTIONS} connections, {SECONDS} s each, after a "
            f"{WARMUP_SECONDS} s warm-up)",
            "\n".join(lines),
        )
    )
    section.notes.append(
        f"Production topology (deploy/prod.py): {topology.describe().split(', ')[0]}, no "
        "run_huey (accept path only); what the accept path enqueues is flushed from Redis DB 12 "
        "after each run. Targets judged through nginx; 'gunicorn direct' is the same gunicorn "
        "without the proxy. gunicorn sync workers close each connection, so nginx opens one "
        "per request to gunicorn (the README's config)."
    )
    section.notes.append(
        "Database connections as project/settings.py chooses them (persistent under gunicorn); "
        f"settings: {', '.join(f'{k}={v}' for k, v in _env_shown().items())}."
    )


def _env_shown() -> dict[str, str]:
    env = child_env()
    keys = ("DEBUG", "INCOMING_RATE_LIMIT", "REDIS_URL", "DATABASE_URL")
    return {k: env[k] for k in keys}

"""Section 1 — ingest: POST /server/incoming_data/ with a 1 KB JSON body, for an account with 1
and with 10 active destinations, against a bare Django view on the same server.

wrk holds 32 keep-alive connections for 10 s per target (after a 1 s warm-up that is not
counted). No queue worker runs: only the accept path is measured (the tasks it enqueues pile up
in Redis DB 12 and are flushed afterwards). Accepted events are counted in the database, not
only from wrk's status codes. CPU per request comes from /proc of the server processes (and of
PostgreSQL and Redis, which serve other clients too if any run meanwhile)."""

from collections.abc import Callable
from dataclasses import dataclass

from bench import seed
from bench.common import (
    Context,
    CpuMeter,
    Proc,
    Processes,
    Section,
    WrkResult,
    child_env,
    fmt,
    free_port,
    fresh_state,
    log,
    processes,
    ratio,
    service_groups,
    tool_version,
    tools_env,
    verdict,
    wrk,
)
from delivery.models import Event

SECONDS = 10
WARMUP_SECONDS = 1
CONNECTIONS = 32
TARGET_EVENTS_PER_S = 1000.0
TARGET_SHARE_OF_BARE = 0.30


@dataclass
class Server:
    name: str
    start: Callable[[Processes, int], Proc]
    command: str
    headline: bool = False  # the configuration the targets are judged on


def _servers() -> list[Server]:
    pool = {"DJANGO_SETTINGS_MODULE": "bench.settings_pool"}
    return [
        Server(
            "daphne",
            lambda procs, port: procs.daphne(port),
            "daphne -b 127.0.0.1 -p PORT project.asgi:application",
            headline=True,
        ),
        Server(
            "daphne + psycopg pool",
            lambda procs, port: procs.daphne(port, tools_env(**pool)),
            "DJANGO_SETTINGS_MODULE=bench.settings_pool daphne … project.asgi:application",
        ),
        Server(
            "gunicorn 2 sync, CONN_MAX_AGE=60",
            lambda procs, port: procs.gunicorn(port, 2, tools_env(DATABASE_CONN_MAX_AGE="60")),
            "DATABASE_CONN_MAX_AGE=60 python -m gunicorn -w 2 -k sync -b 127.0.0.1:PORT "
            "project.wsgi:application",
        ),
    ]


@dataclass
class Measure:
    server: str
    target: str
    wrk: WrkResult
    accepted: int  # events committed during the run (the bare view: requests answered 202)
    cpu_us: dict[str, float]  # per request: server, postgres, redis

    @property
    def per_second(self) -> float:
        return self.accepted / self.wrk.seconds if self.wrk.seconds else 0.0


def run(ctx: Context) -> Section:
    section = Section("ingest", "POST /server/incoming_data/, 1 KB JSON, accept path only")
    fresh_state()
    # Destinations point at the discard port: no worker runs, nothing is delivered.
    one = seed.tenant(1, "http://127.0.0.1:9", name="ingest-1")
    ten = seed.tenant(10, "http://127.0.0.1:9", name="ingest-10")
    targets = [
        ("bare view", "/bench/bare/", None),
        ("1 destination", "/server/incoming_data/", one),
        ("10 destinations", "/server/incoming_data/", ten),
    ]
    measures: list[Measure] = []
    log_dir = ctx.log_dir
    for server in _servers():
        with processes(log_dir) as procs:
            port = free_port()
            proc = server.start(procs, port)
            section.commands.append(server.command.replace("PORT", str(port)))
            for target, path, tenant in targets:
                url = f"http://127.0.0.1:{port}{path}"
                headers = {"CL-X-TOKEN": tenant.app_secret} if tenant else {}
                wrk(url, script_dir=log_dir, headers=headers, seconds=WARMUP_SECONDS)
                meter = CpuMeter({"server": proc.tree, **service_groups()})
                before = Event.objects.filter(account=tenant.account).count() if tenant else 0
                meter.start()
                result = wrk(url, script_dir=log_dir, headers=headers, seconds=SECONDS)
                meter.stop()
                if tenant:
                    accepted = Event.objects.filter(account=tenant.account).count() - before
                else:
                    accepted = result.requests - result.non_2xx
                m = Measure(server.name, target, result, accepted, meter.per(result.requests))
                measures.append(m)
                log(
                    f"{server.name:34} {target:16} {result.rps:8.0f} req/s  "
                    f"{m.per_second:8.0f} accepted/s  p50 {result.p50_ms:.1f} ms  "
                    f"p99 {result.p99_ms:.1f} ms  server {m.cpu_us['server']:.0f} µs/req"
                    + (f"  non-2xx {result.non_2xx}" if result.non_2xx else "")
                    + (f"  {result.errors}" if result.errors else "")
                )
        fresh_state_after_server()
    section.commands.insert(
        0,
        f"wrk -t1 -c{CONNECTIONS} -d{SECONDS}s --latency -s post.lua URL"
        "   # post.lua: POST, Content-Type: application/json, CL-X-TOKEN, 1 KB body",
    )
    _report(section, measures)
    return section


def fresh_state_after_server() -> None:
    """Drop the queued tasks (no worker runs in this section) but keep the rows and tenants."""
    from bench.common import flush_redis

    flush_redis()


def _report(section: Section, measures: list[Measure]) -> None:
    by = {(m.server, m.target): m for m in measures}
    servers = list(dict.fromkeys(m.server for m in measures))
    headline = _servers()[0].name
    for server in servers:
        bare = by[(server, "bare view")]
        section.row(f"{server}: bare view", f"{fmt(bare.wrk.rps)} req/s")
        for target in ("1 destination", "10 destinations"):
            m = by[(server, target)]
            share = m.per_second / bare.wrk.rps if bare.wrk.rps else 0.0
            target_text = verdict_text = ""
            if target == "10 destinations" and server == headline:
                target_text = f"≥ {TARGET_EVENTS_PER_S:,.0f}/s, ≥ {TARGET_SHARE_OF_BARE:.0%} bare"
                met = m.per_second >= TARGET_EVENTS_PER_S and share >= TARGET_SHARE_OF_BARE
                verdict_text = verdict(
                    met,
                    f"{m.per_second / TARGET_EVENTS_PER_S:.0%} of the rate, {share:.0%} of bare",
                )
            section.row(
                f"{server}: {target}",
                f"{fmt(m.per_second)} events/s",
                f"bare {fmt(bare.wrk.rps)} req/s",
                ratio(m.per_second, bare.wrk.rps),
                target_text,
                verdict_text,
            )
    lines = [
        f"{'server':34} {'target':16} {'req/s':>8} {'accepted/s':>10} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'server µs':>9} {'pg µs':>7} {'redis µs':>8}  (CPU per request)"
    ]
    for m in measures:
        lines.append(
            f"{m.server:34} {m.target:16} {m.wrk.rps:8.0f} {m.per_second:10.0f} "
            f"{m.wrk.p50_ms:7.1f} {m.wrk.p99_ms:7.1f} {m.cpu_us['server']:9.0f} "
            f"{m.cpu_us['postgres']:7.0f} {m.cpu_us['redis']:8.0f}"
            + (f"  non-2xx: {m.wrk.non_2xx}" if m.wrk.non_2xx else "")
            + (f"  {m.wrk.errors}" if m.wrk.errors else "")
        )
    section.details.append(
        (
            f"All runs (32 connections, 10 s each, after a {WARMUP_SECONDS} s warm-up)",
            "\n".join(lines),
        )
    )
    section.notes.append(
        "No queue worker runs during this section (accept path only); the enqueued tasks are "
        "flushed from Redis DB 12 after each server."
    )
    section.notes.append(
        f"gunicorn {tool_version('gunicorn')} is not in requirements.txt: run.py installs it "
        "into bench/.tools with `pip install --target` and puts that directory on PYTHONPATH "
        "of the gunicorn process only; .venv is not modified."
    )
    section.notes.append(
        "bench.settings_pool = the bench settings plus Django's PostgreSQL pool "
        "(OPTIONS pool, psycopg-pool from bench/.tools): the fix proposed for daphne. "
        "Default DATABASE_CONN_MAX_AGE=0 (as README documents) unless the row says otherwise; "
        f"settings: {', '.join(f'{k}={v}' for k, v in _env_shown().items())}."
    )


def _env_shown() -> dict[str, str]:
    env = child_env()
    keys = ("DEBUG", "INCOMING_RATE_LIMIT", "DATABASE_CONN_MAX_AGE", "REDIS_URL", "DATABASE_URL")
    return {k: env[k] for k in keys}

"""Section 2 — delivery: 20,000 queued DeliveryLog rows (bulk_create, 2,000 events x 10
destinations) pointing at an nginx sink (`return 200;`), their work queued as the accept path
queues it (seed.enqueue: one `wake_account` task with the lane engine), then ONE
`manage.py run_huey -w 16 -k thread` process (the production default: persistent database
connections) drains them. Reference: a bare requests.Session loop posting the same 1 KB body to
the same sink from one thread.

The drain is bounded: the rate is measured from the first finished delivery for at most
DRAIN_SECONDS (or until all are done); pg_stat_statements counts the SQL statements and
commits PostgreSQL ran meanwhile. Then py-spy samples the running worker, and the engine runs
in-process over fresh logs of one destination: CPU per delivery, SQL statements per delivery
(CaptureQueriesContext) and a cProfile."""

import cProfile
import pstats
import time

import requests

from bench import profiling, seed
from bench.common import (
    BODY,
    Context,
    CpuMeter,
    Nginx,
    Proc,
    Section,
    StatementCounts,
    count_logs,
    fmt,
    free_port,
    fresh_state,
    knob,
    log,
    processes,
    ratio,
    service_groups,
    statement_counts,
    verdict,
)
from delivery import engine

LOGS = knob("BENCH_DELIVERY_LOGS", 20_000)
DESTINATIONS = 10
THREADS = knob("BENCH_DELIVERY_THREADS", 16)
DRAIN_SECONDS = knob("BENCH_DELIVERY_SECONDS", 25)
REFERENCE_SECONDS = 5
PROFILE_LOGS = 300
PY_SPY_SECONDS = 8
TARGET_SHARE = 0.40
TARGET_STATEMENTS = 0.5


def run(ctx: Context) -> Section:
    section = Section("delivery", f"one run_huey -w {THREADS} -k thread draining queued deliveries")
    fresh_state()
    with processes(ctx.log_dir) as procs:
        sink = procs.nginx(free_port())
        tenant = seed.tenant(DESTINATIONS, sink.url, name="delivery")
        t0 = time.monotonic()
        ids = seed.queued_logs(tenant, LOGS)
        seeded = time.monotonic() - t0
        queued_how = seed.enqueue(tenant, ids)
        log(
            f"seeded {len(ids)} queued logs in {seeded:.1f} s, queued in "
            f"{time.monotonic() - t0 - seeded:.1f} s: {queued_how}"
        )

        ref_rate, ref_cpu = reference(sink.url + "/reference", REFERENCE_SECONDS)
        log(f"reference requests.Session: {ref_rate:.0f} req/s, {ref_cpu:.0f} µs CPU/request")

        worker = procs.worker(THREADS)
        drained, elapsed, cpu, sql = _drain(tenant, worker, sink, DRAIN_SECONDS)
        rate = drained / elapsed if elapsed else 0.0
        log(
            f"worker: {drained} deliveries in {elapsed:.1f} s = {rate:.0f}/s, "
            f"{cpu['worker']:.0f} µs worker + {cpu['postgres']:.0f} µs PostgreSQL CPU each"
            + (f", {sql.statements / max(drained, 1):.2f} statements each" if sql.available else "")
        )
        spy = None
        if count_logs("success", accounts=[tenant.account.pk]) < LOGS:
            spy = profiling.py_spy(worker.pid, PY_SPY_SECONDS, ctx.log_dir / "py-spy.txt")
        worker.stop()
        done = count_logs("success", accounts=[tenant.account.pk])
        failed = count_logs("failed", accounts=[tenant.account.pk])
        profile = _in_process(sink)

    ctx.figures["delivery_rate"] = rate
    section.commands += [
        f"nginx -p TMP -c nginx.conf   # return 200; on 127.0.0.1:{sink.port}",
        f"python manage.py run_huey -w {THREADS} -k thread   # persistent connections (default)",
    ]
    share = rate / ref_rate if ref_rate else 0.0
    section.row(
        "deliveries/s, one worker",
        f"{fmt(rate)} /s",
        f"requests loop {fmt(ref_rate)} /s",
        ratio(rate, ref_rate),
        f"≥ {TARGET_SHARE:.0%} of reference",
        verdict(share >= TARGET_SHARE, f"{share:.0%}"),
    )
    section.row(
        "CPU per delivery",
        f"worker {fmt(cpu['worker'])} µs",
        f"requests loop {fmt(ref_cpu)} µs",
        ratio(cpu["worker"], ref_cpu),
    )
    section.row(
        "  services per delivery",
        f"pg {fmt(cpu['postgres'])} µs",
        f"redis {fmt(cpu['redis'])}, nginx {fmt(cpu['nginx'])} µs",
    )
    if sql.available:
        per = sql.statements / max(drained, 1)
        section.row(
            "SQL statements per delivery (under load)",
            fmt(per, 2),
            f"{sql.commits / max(drained, 1):.2f} commits; + "
            f"{sql.foreign_key_checks / max(drained, 1):.2f} FK checks by PostgreSQL",
            "",
            f"≤ {TARGET_STATEMENTS}",
            verdict(per <= TARGET_STATEMENTS, f"{per / TARGET_STATEMENTS:.1f}x"),
        )
        section.details.append(
            (
                f"Statements PostgreSQL ran while the worker drained {drained:,} deliveries "
                "(pg_stat_statements, top level, without transaction control, PostgreSQL's own "
                "foreign-key checks and the bench's polling; per delivery)",
                sql.table(drained),
            )
        )
    else:
        section.notes.append(f"SQL statements under load not counted: {sql.note}.")
    section.notes.append(
        f"{LOGS:,} logs seeded ({len(ids) // DESTINATIONS:,} events x {DESTINATIONS} "
        f"destinations) in {seeded:.0f} s and queued with {queued_how}. The worker is measured "
        f"from its first finished delivery for at most {DRAIN_SECONDS} s (bounded: "
        f"{LOGS - done:,} of {LOGS:,} were still not success at the end). Failed deliveries: "
        f"{failed}."
    )
    section.notes.append(
        "Reference: one thread, `requests.Session().post(sink, data=<same 1 KB body>, "
        f"headers=<content-type, user-agent, webhook-*>)` for {REFERENCE_SECONDS} s in the bench "
        "process, nothing else running."
    )
    section.details += profile
    if spy:
        section.details.append(("py-spy of the run_huey worker while draining", spy))
    return section


def _drain(
    tenant: seed.Tenant, worker: Proc, sink: Nginx, seconds: float, total: int = LOGS
) -> tuple[int, float, dict[str, float], StatementCounts]:
    """Deliveries finished, seconds, CPU µs per delivery by process group and the SQL
    statements run, measured from the worker's first finished delivery for at most
    `seconds` (or until all `total` are done)."""
    accounts = [tenant.account.pk]
    first = count_logs("success", accounts=accounts)
    deadline = time.monotonic() + 60
    while (done := count_logs("success", accounts=accounts)) == first:
        if time.monotonic() > deadline or not worker.alive():
            break
        time.sleep(0.05)
    groups = {"worker": worker.tree, "nginx": sink.proc.tree, **service_groups()}  # type: ignore[union-attr]
    meter = CpuMeter(groups)
    with statement_counts() as sql:
        done = count_logs("success", accounts=accounts)
        meter.start()
        start_count, start = done, time.monotonic()
        while done < total and time.monotonic() < start + seconds and worker.alive():
            time.sleep(0.25)
            done = count_logs("success", accounts=accounts)
        meter.stop()
    drained = done - start_count
    return drained, meter.wall, meter.per(drained), sql


def reference(url: str, seconds: float, limit: int = 50_000) -> tuple[float, float]:
    """A bare requests.Session loop: requests/s and CPU µs per request (this thread)."""
    session = requests.Session()
    session.trust_env = False
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "DataPusher/1.0 (+webhooks)",
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    }
    body = BODY.encode()
    session.post(url, data=body, headers=headers, timeout=5).close()
    count = 0
    cpu0, t0 = time.thread_time(), time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end and count < limit:
        response = session.post(url, data=body, headers=headers, timeout=5)
        response.raise_for_status()
        count += 1
    elapsed, cpu = time.monotonic() - t0, time.thread_time() - cpu0
    return count / elapsed, cpu * 1e6 / count


def _drain_lane(destination_id: int) -> None:
    """What tasks.lane does for one destination, in this process: take its first lane slot,
    run the lane until nothing is due (each run is one time slice), give back extra slots."""
    if not engine.take_slot(destination_id, 0):
        raise RuntimeError(f"lane slot 0 of destination {destination_id} is taken")
    while True:
        run = engine.lane_run(destination_id, 0)
        for extra in run.spawn:
            engine.free_slot(destination_id, extra)
        if not run.again:
            return


def _in_process(sink: Nginx) -> list[tuple[str, str]]:
    """The engine in this process over fresh queued logs of one destination (no worker runs):
    CPU per delivery (this process, PostgreSQL, Redis), SQL statements per delivery, and a
    cProfile of where one delivery's CPU goes."""
    from django.db import close_old_connections, connection
    from django.test.utils import CaptureQueriesContext

    tenant = seed.tenant(1, sink.url, name="delivery-profile")
    destination_id = tenant.destinations[0].pk
    how = f"engine.lane_run(destination_id={destination_id})"
    accounts = [tenant.account.pk]
    close_old_connections()

    # 1. CPU per delivery.
    seed.queued_logs(tenant, PROFILE_LOGS)
    meter = CpuMeter(service_groups())
    before = count_logs("success", accounts=accounts)
    meter.start()
    cpu0 = time.process_time()
    _drain_lane(destination_id)
    own = time.process_time() - cpu0
    meter.stop()
    delivered = count_logs("success", accounts=accounts) - before
    per = meter.per(delivered)
    lines = [
        f"{delivered} deliveries by {how}: this process {own * 1e6 / max(delivered, 1):,.0f} µs, "
        f"PostgreSQL {per['postgres']:,.0f} µs, Redis {per['redis']:,.0f} µs CPU per delivery"
    ]

    # 2. SQL statements per delivery (what the structural test counts).
    seed.queued_logs(tenant, PROFILE_LOGS)
    before = count_logs("success", accounts=accounts)
    with CaptureQueriesContext(connection) as captured:
        _drain_lane(destination_id)
    statements = len(captured.captured_queries)
    counted = count_logs("success", accounts=accounts) - before
    lines.append(
        f"{statements} SQL statements for {counted} deliveries: "
        f"{statements / max(counted, 1):.2f} per delivery (CaptureQueriesContext)"
    )
    results = [("The engine in-process, one destination, no worker running", "\n".join(lines))]

    # 3. cProfile.
    seed.queued_logs(tenant, PROFILE_LOGS)
    before = count_logs("success", accounts=accounts)
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    _drain_lane(destination_id)
    profile.disable()
    profiled = count_logs("success", accounts=accounts) - before
    close_old_connections()
    stats = pstats.Stats(profile)
    parts = profiling.cumulative_of(
        stats,
        {
            "HTTP send (transport.send)": ("delivery/transport.py", "send"),
            "claim a batch (outbox.claim)": ("delivery/outbox.py", "claim"),
            "write results (outbox.record)": ("delivery/outbox.py", "record"),
            "live publish (live.publish)": ("delivery/live.py", "publish"),
            "PostgreSQL connect": ("django/db/backends/base/base.py", "connect"),
            "SQL statements (cursor execute)": ("django/db/backends/utils.py", "_execute"),
        },
    )
    total = sum(
        tt
        for (_p, _l, _f), (_c, _n, tt, _ct, _cl) in stats.stats.items()  # type: ignore[attr-defined]
    )
    n = max(profiled, 1)
    lines = [f"{how}, process CPU per delivery under cProfile: {total * 1e6 / n:,.0f} µs"]
    lines += [
        f"  {label:42} {sec * 1e6 / n:7,.0f} µs  {sec / total if total else 0:5.0%}"
        for label, sec in parts.items()
    ]
    results.append(
        (
            f"Where one delivery's CPU goes (cProfile, in-process, {profiled} deliveries)",
            "\n".join(lines),
        )
    )
    results.append(
        (
            "Top functions by cumulative CPU (µs per delivery, cProfile inflates them ~3x)",
            profiling.top(stats, "cumulative", 22, n),
        )
    )
    results.append(
        ("Top functions by own CPU (µs per delivery)", profiling.top(stats, "tottime", 12, n))
    )
    return results

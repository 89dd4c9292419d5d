"""Section 2 — delivery: 20,000 queued DeliveryLog rows (bulk_create, 2,000 events x 10
destinations) pointing at an nginx sink (`return 200;`), their ids enqueued, then ONE
`manage.py run_huey -w 8 -k thread` process drains them. Reference: a bare requests.Session
loop posting the same 1 KB body to the same sink from one thread.

The drain is bounded: the rate is measured from the first finished delivery for at most
DRAIN_SECONDS (or until all are done). Then py-spy samples the running worker, and cProfile
runs services.log_deliver in-process over a few hundred logs — as is, and with the fixes
proposed in the report simulated (bench-only monkeypatches, the app code is untouched)."""

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import requests

from bench import profiling, seed
from bench.common import (
    BODY,
    Context,
    CpuMeter,
    Nginx,
    Proc,
    Section,
    child_env,
    fmt,
    free_port,
    fresh_state,
    log,
    processes,
    ratio,
    service_groups,
    verdict,
)
from delivery.models import DeliveryLog, LogStatus

LOGS = 20_000
DESTINATIONS = 10
DRAIN_SECONDS = 25
WORKER_RUNS = [("default", {}), ("CONN_MAX_AGE=60", {"DATABASE_CONN_MAX_AGE": "60"})]
REFERENCE_SECONDS = 5
PROFILE_LOGS = 120
PY_SPY_SECONDS = 8
TARGET_SHARE = 0.40


def run(ctx: Context) -> Section:
    section = Section("delivery", "one run_huey -w 8 -k thread draining queued deliveries")
    fresh_state()
    with processes(ctx.log_dir) as procs:
        sink = procs.nginx(free_port())
        tenant = seed.tenant(DESTINATIONS, sink.url, name="delivery")
        t0 = time.monotonic()
        ids = seed.queued_logs(tenant, LOGS)
        seeded = time.monotonic() - t0
        seed.enqueue(ids)
        log(
            f"seeded {len(ids)} queued logs in {seeded:.1f} s, enqueued in "
            f"{time.monotonic() - t0 - seeded:.1f} s"
        )

        ref_rate, ref_cpu = reference(sink.url + "/reference", REFERENCE_SECONDS)
        log(f"reference requests.Session: {ref_rate:.0f} req/s, {ref_cpu:.0f} µs CPU/request")

        runs = []
        spy = None
        for label, env in WORKER_RUNS:
            worker = procs.worker(8, child_env(**env))
            drained, elapsed, cpu = _drain(tenant, worker, sink, DRAIN_SECONDS)
            rate = drained / elapsed if elapsed else 0.0
            runs.append((label, rate, cpu, drained, elapsed))
            log(
                f"worker ({label}): {drained} deliveries in {elapsed:.1f} s = {rate:.0f}/s, "
                f"{cpu['worker']:.0f} µs worker + {cpu['postgres']:.0f} µs PostgreSQL CPU each"
            )
            if spy is None and _successes(tenant) < LOGS:
                spy = profiling.py_spy(worker.pid, PY_SPY_SECONDS, ctx.log_dir / "py-spy.txt")
            worker.stop()
        done = _successes(tenant)
        failed = DeliveryLog.objects.filter(account=tenant.account, status=LogStatus.FAILED).count()

        # In-process profile over logs the worker did not reach (or fresh ones).
        left = list(
            DeliveryLog.objects.filter(account=tenant.account, status=LogStatus.QUEUED)
            .order_by("id")
            .values_list("id", flat=True)[: PROFILE_LOGS * 4]
        )
        if len(left) < PROFILE_LOGS * 4:
            left += seed.queued_logs(tenant, PROFILE_LOGS * 4 - len(left))
        profile = _profiles(left)

    label, rate, cpu, drained, elapsed = runs[0]
    ctx.figures["delivery_rate"] = rate
    section.commands += [
        f"nginx -p TMP -c nginx.conf   # return 200; on 127.0.0.1:{sink.port}",
        "python manage.py run_huey -w 8 -k thread   # DATABASE_CONN_MAX_AGE=0 (default)",
        "DATABASE_CONN_MAX_AGE=60 python manage.py run_huey -w 8 -k thread",
    ]
    for i, (label, rate_i, cpu_i, _drained, _elapsed) in enumerate(runs):
        share_i = rate_i / ref_rate if ref_rate else 0.0
        section.row(
            f"deliveries/s, one worker ({label})",
            f"{fmt(rate_i)} /s",
            f"requests loop {fmt(ref_rate)} /s",
            ratio(rate_i, ref_rate),
            f"≥ {TARGET_SHARE:.0%} of reference" if i == 0 else "",
            verdict(share_i >= TARGET_SHARE, f"{share_i:.0%}") if i == 0 else "",
        )
        section.row(
            f"CPU per delivery ({label})",
            f"worker {fmt(cpu_i['worker'])} µs",
            f"requests loop {fmt(ref_cpu)} µs",
            ratio(cpu_i["worker"], ref_cpu),
        )
        section.row(
            f"  services per delivery ({label})",
            f"pg {fmt(cpu_i['postgres'])} µs",
            f"redis {fmt(cpu_i['redis'])}, nginx {fmt(cpu_i['nginx'])} µs",
        )
    section.notes.append(
        f"{LOGS:,} logs seeded ({len(ids) // DESTINATIONS:,} events x {DESTINATIONS} "
        f"destinations) in {seeded:.0f} s. Each worker run is measured from its first finished "
        f"delivery for at most {DRAIN_SECONDS} s (bounded: {LOGS - done:,} of {LOGS:,} were "
        f"still queued at the end). Failed deliveries: {failed}."
    )
    section.notes.append(
        "Reference: one thread, `requests.Session().post(sink, data=<same 1 KB body>, "
        f"headers=<content-type, user-agent, webhook-*>)` for {REFERENCE_SECONDS} s in the bench "
        "process, nothing else running."
    )
    for caption, block in profile:
        section.details.append((caption, block))
    if spy:
        section.details.append(("py-spy of the run_huey worker while draining", spy))
    return section


def _drain(
    tenant: seed.Tenant, worker: Proc, sink: Nginx, seconds: float
) -> tuple[int, float, dict[str, float]]:
    """Deliveries finished, seconds, and CPU µs per delivery by process group, measured from
    the worker's first finished delivery for at most `seconds` (or until all are done)."""
    first = _successes(tenant)
    deadline = time.monotonic() + 60
    while (done := _successes(tenant)) == first and time.monotonic() < deadline:
        time.sleep(0.05)
    groups = {"worker": worker.tree, "nginx": sink.proc.tree, **service_groups()}  # type: ignore[union-attr]
    meter = CpuMeter(groups)
    meter.start()
    start_count, start = done, time.monotonic()
    while done < LOGS and time.monotonic() < start + seconds and worker.alive():
        time.sleep(0.5)
        done = _successes(tenant)
    meter.stop()
    drained = done - start_count
    return drained, time.monotonic() - start, meter.per(drained)


def _successes(tenant: seed.Tenant) -> int:
    return DeliveryLog.objects.filter(account=tenant.account, status=LogStatus.SUCCESS).count()


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


def _profiles(log_ids: list[int]) -> list[tuple[str, str]]:
    """services.log_deliver in this process over fresh logs: CPU per delivery (this process,
    PostgreSQL, Redis) as the worker runs it (connection closed after each task, publish
    through async_to_sync) and with the proposed fixes simulated one after the other; then a
    cProfile of the first way."""
    from django.db import close_old_connections, connection

    from delivery import services

    n = PROFILE_LOGS
    batches = [log_ids[i * n : (i + 1) * n] for i in range(4)]

    def runner(batch: list[int], close: bool) -> Callable[[], None]:
        it = iter(batch)

        def one() -> None:
            services.log_deliver(log_id=next(it))
            if close:
                connection.close()  # what huey's db_task does with CONN_MAX_AGE=0

        return one

    def measured(batch: list[int], close: bool) -> dict[str, float]:
        meter = CpuMeter({"bench": lambda: [os.getpid()], **service_groups()})
        fn = runner(batch, close)
        fn()  # warm-up: not counted
        meter.start()
        for _ in range(len(batch) - 1):
            fn()
        meter.stop()
        return meter.per(len(batch) - 1)

    close_old_connections()
    summary = [("as the worker runs it today", measured(batches[0], close=True))]
    with persistent_loop_publish():
        summary.append(
            ("+ publish through one event loop per process", measured(batches[1], close=True))
        )
        close_old_connections()
        summary.append(
            ("+ database connection kept (CONN_MAX_AGE>0)", measured(batches[2], close=False))
        )
    close_old_connections()
    base = sum(summary[0][1].values())
    lines = [f"  {'':46} {'python':>8} {'postgres':>9} {'redis':>7} {'total':>8}"]
    for label, cpu in summary:
        total = sum(cpu.values())
        lines.append(
            f"  {label:46} {cpu['bench']:8,.0f} {cpu['postgres']:9,.0f} {cpu['redis']:7,.0f} "
            f"{total:8,.0f} µs  ({base / total:.1f}x less)"
        )
    results = [
        (
            f"CPU per delivery, in-process over {n - 1} logs each: today and with the proposed "
            "fixes simulated (bench-only monkeypatches)",
            "\n".join(lines),
        )
    ]

    calls = (n - 1) // 2
    stats, _plain = profiling.cprofile(runner(batches[3], close=True), calls)
    parts = profiling.cumulative_of(
        stats,
        {
            "HTTP send (transport.send)": ("delivery/transport.py", "send"),
            "live publish (async_to_sync group_send)": ("delivery/live.py", "publish"),
            "PostgreSQL connect": ("django/db/backends/base/base.py", "connect"),
            "SQL statements (cursor execute)": ("django/db/backends/utils.py", "_execute"),
        },
    )
    total = sum(
        ct
        for (path, _l, func), (_c, _n, _t, ct, _cl) in stats.stats.items()  # type: ignore[attr-defined]
        if func == "log_deliver" and path.endswith("delivery/services.py")
    )
    lines = [f"log_deliver, process CPU per delivery under cProfile: {total * 1e6 / calls:,.0f} µs"]
    lines += [
        f"  {label:42} {sec * 1e6 / calls:7,.0f} µs  {sec / total:5.0%}"
        for label, sec in parts.items()
    ]
    results.append(
        (
            "Where one delivery's CPU goes (cProfile, in-process, as the worker runs it)",
            "\n".join(lines),
        )
    )
    results.append(
        (
            "Top functions by cumulative CPU (µs per delivery, cProfile inflates them ~3x)",
            profiling.top(stats, "cumulative", 22, calls),
        )
    )
    results.append(
        ("Top functions by own CPU (µs per delivery)", profiling.top(stats, "tottime", 12, calls))
    )
    return results


@contextmanager
def persistent_loop_publish() -> Iterator[None]:
    """Bench-only simulation of the proposed live.py fix: send to the channel layer through
    one event loop that lives as long as the process (its Redis connections stay open),
    instead of async_to_sync, which builds a loop — and new Redis connections — per call."""
    from delivery import live

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    original = live._group_send

    def group_send(layer: object, group: str, message: dict[str, object]) -> None:
        coroutine = layer.group_send(group, message)  # type: ignore[attr-defined]
        asyncio.run_coroutine_threadsafe(coroutine, loop).result(5)

    live._group_send = group_send  # type: ignore[assignment]
    try:
        yield
    finally:
        live._group_send = original
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

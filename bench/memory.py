"""Section 5 — memory: RSS of one `run_huey -w 8 -k thread` process before and after a long
run of deliveries to the nginx sink. "Before" is taken after a warm-up of WARMUP deliveries
(imports, connections and caches settled); then the worker delivers for at most
RUN_SECONDS — as many of the 100,000 as fit (the count is sized from the delivery rate
measured in section 2 when it ran) — with RSS sampled along the way."""

import time

from bench import seed
from bench.common import (
    Context,
    Section,
    fmt,
    free_port,
    fresh_state,
    log,
    processes,
    rss_kib,
    verdict,
)
from delivery.models import DeliveryLog, LogStatus

TARGET_DELIVERIES = 100_000
WARMUP = 300
RUN_SECONDS = 100
TARGET_GROWTH = 0.10


def run(ctx: Context) -> Section:
    section = Section("memory", "run_huey RSS before/after a long delivery run")
    fresh_state()
    rate = ctx.figures.get("delivery_rate", 80.0)
    count = int(min(TARGET_DELIVERIES, WARMUP + rate * RUN_SECONDS * 1.3 + 500))
    with processes(ctx.log_dir) as procs:
        sink = procs.nginx(free_port())
        tenant = seed.tenant(10, sink.url, name="memory")
        ids = seed.queued_logs(tenant, count)
        seed.enqueue(tenant, ids)
        log(f"{count:,} deliveries queued (sized from {rate:.0f}/s)")
        worker = procs.worker(8)
        section.commands.append("python manage.py run_huey -w 8 -k thread")
        deadline = time.monotonic() + 120
        while _done(tenant) < WARMUP and time.monotonic() < deadline:
            time.sleep(0.2)
        before, start_done, start = rss_kib(worker.pid), _done(tenant), time.monotonic()
        samples = [(0.0, start_done, before)]
        while time.monotonic() - start < RUN_SECONDS and worker.alive():
            time.sleep(10)
            done = _done(tenant)
            samples.append((time.monotonic() - start, done, rss_kib(worker.pid)))
            if done >= count:
                break
        after, end_done = samples[-1][2], samples[-1][1]
        peak = max(s[2] for s in samples)
        log(f"RSS {before / 1024:.1f} → {after / 1024:.1f} MiB, {end_done - start_done:,} done")
        worker.stop()
    growth = (after - before) / before if before else 0.0
    delivered = end_done - start_done
    section.row(
        "worker RSS after / before",
        f"{after / 1024:.1f} MiB",
        f"before {before / 1024:.1f} MiB",
        f"{after / before:.2f}×" if before else "n/a",
        f"≤ +{TARGET_GROWTH:.0%}",
        verdict(growth <= TARGET_GROWTH, f"{growth:+.1%}"),
    )
    section.row(
        "deliveries between the two readings",
        f"{fmt(delivered)}",
        f"of {TARGET_DELIVERIES:,} asked",
    )
    section.row("peak RSS sampled", f"{peak / 1024:.1f} MiB")
    per_10k = (after - before) / delivered * 10_000 / 1024 if delivered else 0.0
    section.row("growth per 10,000 deliveries", f"{per_10k:+.2f} MiB")
    section.notes.append(
        f"Bounded at {RUN_SECONDS} s: {delivered:,} deliveries, not {TARGET_DELIVERIES:,} "
        f"(that would take ~{TARGET_DELIVERIES / max(rate, 1) / 60:.0f} min at the rate "
        "measured here); a linear leak would show as steady growth in the samples below."
        if delivered < TARGET_DELIVERIES
        else f"{delivered:,} deliveries."
    )
    section.details.append(
        (
            "RSS samples (seconds, deliveries done, RSS)",
            "\n".join(f"{t:6.0f} s  {d:8,}  {r / 1024:7.1f} MiB" for t, d, r in samples),
        )
    )
    return section


def _done(tenant: seed.Tenant) -> int:
    return DeliveryLog.objects.filter(account=tenant.account, status=LogStatus.SUCCESS).count()

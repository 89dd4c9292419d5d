"""Section — drain: 1,000 events x 10 destinations (one account) posted by 16 concurrent
clients through the production topology (deploy/prod.py: nginx -> gunicorn, run_huey workers)
to an nginx sink (`return 200;`, access log `$msec $http_webhook_id`): the time from the first
POST to the moment all 10,000 deliveries are `success` in the database, and the CPU every
process spent meanwhile (gunicorn, daphne, the workers, PostgreSQL, Redis, the proxy, the sink).

The clock stops at the first poll (every 50 ms) that finds every delivery `success`; the sink's
access log is watched first, so the database is polled only once every delivery has arrived.
`measure()` is shared with the spread section (the same deliveries over 1,000 destinations)."""

import http.client
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bench import seed
from bench.common import (
    BODY,
    Context,
    CpuMeter,
    Section,
    count_logs,
    fmt,
    free_port,
    fresh_state,
    knob,
    log,
    processes,
    service_groups,
    verdict,
)

EVENTS = knob("BENCH_DRAIN_EVENTS", 1000)
DESTINATIONS = 10
CLIENTS = 16
TIMEOUT_SECONDS = knob("BENCH_DRAIN_TIMEOUT", 120)
POLL_SECONDS = 0.05
TARGET_SECONDS = 8.0
PEERS_SECONDS = 14.8  # simple synchronous Django implementations (issue 9), not this run
CPU_ORDER = ("gunicorn", "daphne", "run_huey", "postgres", "redis", "nginx", "sink")
CPU_NAMES = {
    "gunicorn": "gunicorn (HTTP)",
    "daphne": "daphne (WebSocket)",
    "run_huey": "run_huey workers",
    "postgres": "PostgreSQL",
    "redis": "Redis",
    "nginx": "nginx (proxy)",
    "sink": "nginx sink",
}


@dataclass
class Drain:
    """One end-to-end drain: what was posted, how long until all deliveries were `success`."""

    label: str
    accounts: int
    destinations: int  # per account
    events: int  # posted
    accepted: int  # answered 202
    expected: int  # accepted x destinations
    delivered: int  # `success` when the clock stopped
    seconds: float  # first POST -> every delivery `success` (or the timeout)
    post_seconds: float  # first POST -> last 202
    last_arrival: float  # first POST -> the last first arrival at the sink
    sink_requests: int  # duplicates included
    sink_unique: int
    cpu: dict[str, float]  # CPU seconds by process group over `seconds`
    client_cpu: float  # the bench process (16 posting threads, polling)
    topology: str
    command: str
    statuses: dict[int, int] = field(default_factory=dict)  # HTTP status -> count (0: error)

    @property
    def complete(self) -> bool:
        return self.delivered >= self.expected

    @property
    def rate(self) -> float:
        """Deliveries per second over the whole drain."""
        return self.delivered / self.seconds if self.seconds else 0.0


def run(ctx: Context) -> Section:
    section = Section(
        "drain", f"{EVENTS:,} events x {DESTINATIONS} destinations end to end, {CLIENTS} clients"
    )
    result = measure(ctx, "concentrated", accounts=1, events_per_account=EVENTS)
    ctx.figures["drain_rate"] = result.rate
    ctx.figures["drain_seconds"] = result.seconds
    section.commands.append(result.command)
    section.row(
        f"{result.expected:,} deliveries all success",
        f"{fmt(result.seconds, 1)} s",
        f"peers {PEERS_SECONDS} s (issue 9, not this run)",
        "",
        f"≤ {TARGET_SECONDS:.0f} s",
        verdict(
            result.complete and result.seconds <= TARGET_SECONDS,
            f"{result.seconds / TARGET_SECONDS:.1f}x the target"
            if result.complete
            else f"{result.delivered:,} of {result.expected:,} in {TIMEOUT_SECONDS} s",
        ),
    )
    report(section, result)
    return section


def report(section: Section, result: Drain) -> None:
    """The rows and details every drain shows (the spread section's too)."""
    tag = result.label
    section.row(f"{tag}: deliveries/s", f"{fmt(result.rate)} /s", f"{result.delivered:,} done")
    section.row(
        f"{tag}: posting ({CLIENTS} clients)",
        f"{fmt(result.post_seconds, 1)} s",
        f"{fmt(result.events / result.post_seconds if result.post_seconds else 0)} events/s",
        "",
        "",
        "" if result.accepted == result.events else f"{result.events - result.accepted} not 202",
    )
    section.row(f"{tag}: last arrival at the sink", f"{fmt(result.last_arrival, 1)} s")
    total = sum(result.cpu.values())
    section.row(
        f"{tag}: CPU per delivery, all processes",
        f"{fmt(total * 1e6 / max(result.delivered, 1))} µs",
        f"{fmt(total, 1)} CPU s in {fmt(result.seconds, 1)} s",
    )
    lines = [f"{'process':20} {'CPU s':>7} {'µs/delivery':>11} {'cores busy':>10}"]
    for key in CPU_ORDER:
        used = result.cpu.get(key, 0.0)
        lines.append(
            f"{CPU_NAMES[key]:20} {used:7.2f} {used * 1e6 / max(result.delivered, 1):11.0f} "
            f"{used / result.seconds if result.seconds else 0:10.2f}"
        )
    lines.append(
        f"{'all of the above':20} {total:7.2f} {total * 1e6 / max(result.delivered, 1):11.0f} "
        f"{total / result.seconds if result.seconds else 0:10.2f}"
    )
    lines.append(
        f"{'bench client':20} {result.client_cpu:7.2f} "
        f"{result.client_cpu * 1e6 / max(result.delivered, 1):11.0f}   (posting, polling)"
    )
    section.details.append(
        (f"{tag}: CPU by process, first POST -> all success ({result.topology})", "\n".join(lines))
    )
    statuses = ", ".join(f"{code or 'error'}: {n:,}" for code, n in sorted(result.statuses.items()))
    section.notes.append(
        f"{tag}: {result.accounts:,} account(s) x {result.destinations} destinations, "
        f"{result.events:,} events posted by {CLIENTS} clients (keep-alive, interleaved over "
        f"the accounts) through nginx; answers {statuses}; {result.delivered:,} of "
        f"{result.expected:,} deliveries success when the clock stopped; the sink saw "
        f"{result.sink_requests:,} requests for {result.sink_unique:,} webhook-ids "
        f"({result.sink_requests - result.sink_unique:,} duplicates). Topology: "
        f"{result.topology}; its gunicorn workers were warmed up with bare-view requests."
    )


def measure(ctx: Context, label: str, *, accounts: int, events_per_account: int) -> Drain:
    """Post `events_per_account` events to each of `accounts` accounts with DESTINATIONS
    destinations each (interleaved), then wait until every delivery is `success`."""
    fresh_state()
    with processes(ctx.log_dir) as procs:
        sink = procs.nginx(free_port(), access_log=True)
        log(f"{label}: seeding {accounts} account(s) x {DESTINATIONS} destinations")
        tenants = [
            seed.tenant(DESTINATIONS, sink.url, name=f"{label}-{i}") for i in range(accounts)
        ]
        topology = procs.prod()
        plan = [
            (t.app_secret, f"{label}-{n}-{i}")
            for i in range(events_per_account)
            for n, t in enumerate(tenants)
        ]
        account_ids = [t.account.pk for t in tenants]
        groups = {**topology.cpu_groups(), **service_groups(), "sink": sink.proc.tree}  # type: ignore[union-attr]
        meter = CpuMeter(groups)
        log(f"{label}: posting {len(plan):,} events with {CLIENTS} clients")
        meter.start()
        client0 = time.process_time()
        t0 = time.time()
        statuses = post_all(topology.port, plan, CLIENTS)
        post_seconds = time.time() - t0
        accepted = statuses.get(202, 0)
        expected = accepted * DESTINATIONS
        deadline = t0 + TIMEOUT_SECONDS
        delivered = 0
        while time.time() < deadline:
            if len(sink.arrivals()) >= expected:
                delivered = count_logs("success", accounts=account_ids)
                if delivered >= expected:
                    break
            time.sleep(POLL_SECONDS)
        seconds = time.time() - t0
        meter.stop()
        client_cpu = time.process_time() - client0
        if delivered < expected:
            delivered = count_logs("success", accounts=account_ids)
        arrived = sink.arrivals()
        last = max(arrived.values()) - t0 if arrived else float("nan")
        log(
            f"{label}: {delivered:,} of {expected:,} success in {seconds:.1f} s "
            f"(posting {post_seconds:.1f} s, last arrival {last:.1f} s)"
        )
        return Drain(
            label=label,
            accounts=accounts,
            destinations=DESTINATIONS,
            events=len(plan),
            accepted=accepted,
            expected=expected,
            delivered=delivered,
            seconds=seconds,
            post_seconds=post_seconds,
            last_arrival=last,
            sink_requests=sink.requests,
            sink_unique=len(arrived),
            cpu=meter.used,
            client_cpu=client_cpu,
            topology=topology.describe(),
            command=topology.command(),
            statuses=statuses,
        )


def post_all(port: int, plan: list[tuple[str, str]], clients: int) -> dict[int, int]:
    """POST one 1 KB event per (app secret, event id) of `plan` to 127.0.0.1:`port`, from
    `clients` threads with a keep-alive connection each, as fast as the answers come; returns
    the count per HTTP status (0: connection error)."""
    local = threading.local()
    lock = threading.Lock()
    statuses: dict[int, int] = {}

    def post(item: tuple[str, str]) -> None:
        app_secret, event_id = item
        headers = {
            "Content-Type": "application/json",
            "CL-X-TOKEN": app_secret,
            "CL-X-EVENT-ID": event_id,
        }
        status = 0
        for _attempt in range(2):  # a keep-alive connection the proxy closed: reconnect once
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                conn.request("POST", "/server/incoming_data/", BODY, headers)
                response = conn.getresponse()
                response.read()
                status = response.status
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                local.conn = None
        with lock:
            statuses[status] = statuses.get(status, 0) + 1

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(post, plan))
    return statuses

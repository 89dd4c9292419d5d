"""Section 3 — latency under an open loop: 100 events/s for 30 s (each with its own
CL-X-EVENT-ID, 1 KB body, one destination) posted to the production topology (deploy/prod.py:
nginx -> gunicorn, run_huey workers), delivered to an nginx sink whose access log stamps each
arrival ($msec, the webhook-id). A graphql-transport-ws client subscribed to
`logUpdates(accountId)` through the same nginx (upgraded to daphne) stamps each SUCCESS.

Times are taken from the moment the client sent the POST (an upper bound of "accepted": the
202 is sent after commit, and the delivery may start before the client has read the 202) and
also from the moment the 202 was read. Sends follow the schedule whatever the answers (open
loop); a send that starts late is measured from its scheduled time, so queueing in front of
the server counts too. `send_open_loop`, `await_deliveries` and `sink_latencies` are the
open-loop machinery the ladder section reuses."""

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bench import seed, wsclient
from bench.common import (
    BODY,
    Context,
    Nginx,
    Section,
    fmt,
    free_port,
    fresh_state,
    log,
    percentile,
    processes,
    verdict,
)
from delivery.models import DeliveryLog

RATE = 100
SECONDS = 30
SENDERS = 32
SETTLE_SECONDS = 10
MAX_LAG_SECONDS = 3.0
LOW_RATE = 10
LOW_SECONDS = 15
TARGET_SINK_MS = 50.0
TARGET_WS_MS = 100.0


@dataclass
class Sent:
    scheduled: float  # epoch seconds
    sent: float = 0.0
    answered: float = 0.0
    status: int = 0


def run(ctx: Context) -> Section:
    section = Section("latency", f"open loop {RATE} events/s for {SECONDS} s, end to end")
    fresh_state()
    with processes(ctx.log_dir) as procs:
        sink = procs.nginx(free_port(), access_log=True)
        tenant = seed.tenant(1, sink.url, name="latency")
        topology = procs.prod()
        section.commands += [
            topology.command(),
            f"nginx (return 200; access_log '$msec $http_webhook_id') on 127.0.0.1:{sink.port}",
        ]
        success: dict[int, float] = {}

        def on_next(data: dict[str, object], arrival: float) -> None:
            update = data.get("logUpdates") or {}
            if isinstance(update, dict) and update.get("status") == "SUCCESS":
                success.setdefault(int(str(update["id"])), arrival)

        loop = wsclient.LoopThread()
        loop.spawn(
            wsclient.subscribe(
                topology.ws_url,
                tenant.token,
                {"id": str(tenant.account.pk)},
                on_next,
                stop=loop.stop_event,
            )
        )
        deadline = time.monotonic() + 30
        while wsclient.group_size(tenant.account.pk) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)

        send_open_loop(topology.port, tenant.app_secret, "warm", RATE, 1.0)  # not counted
        phases = [(RATE, SECONDS, "lat", True), (LOW_RATE, LOW_SECONDS, "low", False)]
        for rate, seconds, prefix, judged in phases:
            time.sleep(2)
            log(f"sending {rate} events/s for {seconds} s")
            sent = send_open_loop(topology.port, tenant.app_secret, prefix, rate, seconds)
            accepted = {k: s for k, s in sent.items() if s.status == 202}
            delivered = await_deliveries(
                tenant, prefix, accepted, sink, SETTLE_SECONDS, success=success
            )
            log(f"sent {len(sent)}, accepted {len(accepted)}")
            _report(section, rate, seconds, judged, sent, accepted, delivered, success)
        loop.close()
    section.notes.insert(
        0,
        "Latencies are from the scheduled send time (open loop, so queueing in front of the "
        "server counts); 'after 202' is from the moment the client read the 202 (negative: "
        "the delivery arrived before the answer). nginx stamps arrivals to the millisecond. "
        f"Topology: {topology.describe()}; HTTP and the subscription both through nginx.",
    )
    return section


@dataclass
class Delivered:
    """The deliveries of the accepted events of one open-loop run, as the sink saw them."""

    events: dict[int, str]  # log id -> event id
    hooks: dict[int, str]  # log id -> webhook-id
    arrived: dict[str, float]  # webhook-id -> first arrival at the sink (epoch seconds)
    expected: int  # accepted events x destinations

    @property
    def missing(self) -> int:
        """Deliveries of accepted events not seen at the sink (a log not even created counts)."""
        return self.expected - sum(1 for hook in self.hooks.values() if hook in self.arrived)


def await_deliveries(
    tenant: seed.Tenant,
    prefix: str,
    accepted: dict[str, Sent],
    sink: Nginx,
    settle_seconds: float,
    *,
    success: dict[int, float] | None = None,
) -> Delivered:
    """Wait (at most `settle_seconds`) until every delivery of the accepted events (those
    sent with event ids `prefix-N`) has reached the sink — and, with `success`, has been seen
    as SUCCESS by the subscriber."""
    expected = len(accepted) * len(tenant.destinations)
    deadline = time.monotonic() + settle_seconds
    events: dict[int, str] = {}
    hooks: dict[int, str] = {}
    while True:
        if len(events) < expected:  # the logs exist once the 202 is sent; re-read if not
            rows = DeliveryLog.objects.filter(
                account=tenant.account, event__event_id__startswith=f"{prefix}-"
            ).values_list("pk", "event__event_id", "webhook_id")
            events = {pk: event_id for pk, event_id, _ in rows if event_id in accepted}
            hooks = {pk: webhook_id for pk, _, webhook_id in rows if pk in events}
        arrived = sink.arrivals()
        done = len(events) >= expected and all(h in arrived for h in hooks.values())
        if done and success is not None:
            done = all(pk in success for pk in events)
        if done or time.monotonic() > deadline:
            return Delivered(events, hooks, arrived, expected)
        time.sleep(0.5)


def sink_latencies(
    accepted: dict[str, Sent], delivered: Delivered
) -> tuple[list[float], list[float]]:
    """ms from the scheduled send, and from the 202, to the arrival at the sink, per delivery."""
    to_sink, after_202 = [], []
    for pk, event_id in delivered.events.items():
        s = accepted[event_id]
        if (t := delivered.arrived.get(delivered.hooks[pk])) is not None:
            to_sink.append((t - s.scheduled) * 1e3)
            after_202.append((t - s.answered) * 1e3)
    return to_sink, after_202


def _report(
    section: Section,
    rate: int,
    seconds: int,
    judged: bool,
    sent: dict[str, Sent],
    accepted: dict[str, Sent],
    delivered: Delivered,
    success: dict[int, float],
) -> None:
    to_sink, sink_after_202 = sink_latencies(accepted, delivered)
    to_ws, ws_after_202 = [], []
    for pk, event_id in delivered.events.items():
        s = accepted[event_id]
        if (t := success.get(pk)) is not None:
            to_ws.append((t - s.scheduled) * 1e3)
            ws_after_202.append((t - s.answered) * 1e3)
    answer = [(s.answered - s.scheduled) * 1e3 for s in accepted.values()]
    skipped = sum(1 for s in sent.values() if not s.sent)

    def p(values: list[float], q: float) -> str:
        return fmt(percentile(values, q), 1)

    tag = f"{rate}/s"
    p99_sink, p99_ws = percentile(to_sink, 99), percentile(to_ws, 99)
    section.row(
        f"{tag}: events accepted (202)",
        f"{len(accepted):,} of {len(sent):,}",
        f"{skipped:,} not sent (> {MAX_LAG_SECONDS:.0f} s late)" if skipped else "",
    )
    section.row(f"{tag}: POST → 202 p50 / p99", f"{p(answer, 50)} / {p(answer, 99)} ms")
    section.row(
        f"{tag}: accept → sink p50 / p99",
        f"{p(to_sink, 50)} / {p(to_sink, 99)} ms",
        f"after 202: {p(sink_after_202, 50)} / {p(sink_after_202, 99)} ms",
        "",
        f"p99 ≤ {TARGET_SINK_MS:.0f} ms" if judged else "",
        verdict(p99_sink <= TARGET_SINK_MS, f"{p99_sink / TARGET_SINK_MS:.1f}x the target")
        if judged
        else "",
    )
    section.row(
        f"{tag}: accept → subscriber SUCCESS p50 / p99",
        f"{p(to_ws, 50)} / {p(to_ws, 99)} ms",
        f"after 202: {p(ws_after_202, 50)} / {p(ws_after_202, 99)} ms",
        "",
        f"p99 ≤ {TARGET_WS_MS:.0f} ms" if judged else "",
        verdict(p99_ws <= TARGET_WS_MS, f"{p99_ws / TARGET_WS_MS:.1f}x the target")
        if judged
        else "",
    )
    section.notes.append(
        f"{tag} for {seconds} s from {SENDERS} client threads (keep-alive connections): "
        f"{len(accepted):,} accepted, {skipped:,} skipped because the server was over "
        f"{MAX_LAG_SECONDS:.0f} s behind; max sink {p(to_sink, 100)} ms, subscriber "
        f"{p(to_ws, 100)} ms; not seen {SETTLE_SECONDS} s after the last send: "
        f"{delivered.missing} at the sink, {delivered.expected - len(to_ws)} by the subscriber."
    )


def send_open_loop(
    port: int,
    app_secret: str,
    prefix: str,
    rate: int,
    seconds: float,
    *,
    senders: int = SENDERS,
) -> dict[str, Sent]:
    """POST rate x seconds events (event ids `prefix-N`) to 127.0.0.1:`port` on schedule
    (open loop) from `senders` threads with keep-alive connections; returns them by event id.
    A send more than MAX_LAG_SECONDS behind its schedule is skipped (`sent` stays 0)."""
    local = threading.local()
    results: dict[str, Sent] = {}
    headers = {
        "Content-Type": "application/json",
        "CL-X-TOKEN": app_secret,
    }

    def post(event_id: str, record: Sent) -> None:
        if time.time() - record.scheduled > MAX_LAG_SECONDS:
            return  # the server is this far behind: skip it (counted as not sent)
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        record.sent = time.time()
        try:
            conn.request(
                "POST", "/server/incoming_data/", BODY, {**headers, "CL-X-EVENT-ID": event_id}
            )
            response = conn.getresponse()
            body = response.read()
            record.answered = time.time()
            record.status = response.status
            if response.status == 202:
                json.loads(body)
        except (OSError, http.client.HTTPException):
            local.conn = None
            record.answered = time.time()

    count = int(rate * seconds)
    with ThreadPoolExecutor(senders) as pool:
        t0 = time.time() + 0.1
        for i in range(count):
            scheduled = t0 + i / rate
            delay = scheduled - time.time()
            if delay > 0:
                time.sleep(delay)
            event_id = f"{prefix}-{i}"
            record = results[event_id] = Sent(scheduled)
            pool.submit(post, event_id, record)
    return results

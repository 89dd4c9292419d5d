"""Section 4 — the logs query over 100,000 rows (10,000 events x 10 destinations, one attempt
each), in-process through the whole Django stack (django.test.Client POST /graphql/ with a
bearer token: middleware, token lookup, strawberry, the optimizer), against a raw ORM
`values()` of the same 100 rows (plus one `values()` of their attempts). SQL statements are
counted with CaptureQueriesContext; times are medians of repeated runs."""

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from django.db import connection
from django.db.models import F
from django.test import Client
from django.test.utils import CaptureQueriesContext

from bench import profiling, seed
from bench.common import PAYLOAD, Context, Section, fmt, fresh_state, log, ratio, verdict
from delivery import selectors
from delivery.models import DeliveryAttempt, DeliveryLog, Destination, Event

EVENTS = 10_000
DESTINATIONS = 10
RUNS = 20
TARGET_QUERIES = 3
TARGET_RATIO = 2.0
RAW_FIELDS = ("id", "status", "destination__id", "destination__url", "account__id", "account__name")
QUERY = """query {
  logs(first: 100) {
    edges { node { id status destination { id url } account { id name }
                   attempts { number statusCode } } }
  }
}"""


def run(ctx: Context) -> Section:
    section = Section("query", "logs(first: 100) over 100,000 logs")
    fresh_state()
    tenant = seed.tenant(DESTINATIONS, "http://127.0.0.1:9", name="query")
    t0 = time.monotonic()
    _seed(tenant)
    seconds = time.monotonic() - t0
    log(f"seeded {DeliveryLog.objects.count():,} logs with attempts in {seconds:.0f} s")

    client = Client()
    body = json.dumps({"query": QUERY})
    headers: dict[str, Any] = {
        "HTTP_AUTHORIZATION": f"Bearer {tenant.token}",
        "HTTP_HOST": "127.0.0.1",
    }

    def graphql() -> object:
        response = client.post("/graphql/", body, content_type="application/json", **headers)
        data = response.json()
        assert "errors" not in data, data
        assert len(data["data"]["logs"]["edges"]) == 100
        return data

    def raw() -> object:
        logs = list(
            selectors.log_list(actor=tenant.user)
            .order_by("-received_timestamp", "-id")
            .values(*RAW_FIELDS)[:100]
        )
        attempts = list(
            DeliveryAttempt.objects.filter(log_id__in=[r["id"] for r in logs]).values(
                "log_id", "number", "status_code"
            )
        )
        assert len(logs) == 100
        return logs, attempts

    graphql()  # the token's first use also writes last_used_at: not the steady state
    with CaptureQueriesContext(connection) as captured:
        graphql()
    gql_sql = list(captured.captured_queries)  # later requests reset the connection's log
    with CaptureQueriesContext(connection) as captured:
        raw()
    raw_sql = list(captured.captured_queries)
    gql_ms, raw_ms = _median_ms(graphql), _median_ms(raw)

    def raw_nulls_last() -> object:
        order = F("received_timestamp").desc(nulls_last=True)
        logs = selectors.log_list(actor=tenant.user).order_by(order, "-id")
        return list(logs.values(*RAW_FIELDS)[:100])

    nulls_last_ms = _median_ms(raw_nulls_last)
    token_queries = [q for q in gql_sql if "authtoken" in q["sql"][:400]]
    sql_ms = sum(float(q["time"]) for q in gql_sql) * 1e3
    count = len(gql_sql)
    section.row(
        "SQL statements per request",
        f"{count}",
        f"values(): {len(raw_sql)}",
        "",
        f"≤ {TARGET_QUERIES}",
        verdict(count <= TARGET_QUERIES, f"{count} statements"),
    )
    section.row(
        "  of which the token lookup",
        f"{len(token_queries)}",
        f"without it: {count - len(token_queries)}",
        "",
        f"≤ {TARGET_QUERIES} without",
        verdict(count - len(token_queries) <= TARGET_QUERIES),
    )
    section.row(
        "time per request (median of 20)",
        f"{fmt(gql_ms, 1)} ms",
        f"values() {fmt(raw_ms, 1)} ms",
        ratio(gql_ms, raw_ms),
        f"≤ {TARGET_RATIO:.0f}x",
        verdict(gql_ms <= TARGET_RATIO * raw_ms, f"{gql_ms / raw_ms:.1f}x"),
    )
    section.row("  of which SQL (one captured run)", f"{fmt(sql_ms, 1)} ms")
    section.row(
        "values() ordered like `logs` (NULLS LAST)",
        f"{fmt(nulls_last_ms, 1)} ms",
        f"values() {fmt(raw_ms, 1)} ms",
        ratio(nulls_last_ms, raw_ms),
    )
    slowest = max(gql_sql, key=lambda q: float(q["time"]))
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + slowest["sql"])
        plan = "\n".join(row[0] for row in cursor.fetchall())
    section.details.append(("EXPLAIN ANALYZE of the slowest statement", plan))
    section.details.append(
        (
            "SQL of one GraphQL request (time, statement start)",
            "\n".join(f"{float(q['time']) * 1e3:6.1f} ms  {q['sql'][:150]}" for q in gql_sql),
        )
    )
    stats, _plain = profiling.cprofile(graphql, 5)
    section.details.append(
        (
            "cProfile of the GraphQL request, top by own CPU (µs per request; cProfile inflates)",
            profiling.top(stats, "tottime", 15, 5),
        )
    )
    section.details.append(
        ("Same, top by cumulative CPU", profiling.top(stats, "cumulative", 25, 5))
    )
    section.notes.append(
        f"Seeded with SQL (INSERT … SELECT generate_series): {EVENTS:,} events x "
        f"{DESTINATIONS} destinations = {EVENTS * DESTINATIONS:,} logs, one attempt each, then "
        "ANALYZE. The request runs as an ADMIN member (not a superuser), DEBUG=0; the bench "
        "process keeps its database connection between requests (both sides alike)."
    )
    return section


def _median_ms(fn: Callable[[], object]) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _seed(tenant: seed.Tenant) -> None:
    """100k logs and attempts in three INSERT … SELECT statements (the ORM would take a
    minute on this machine)."""
    models = (Event, DeliveryLog, DeliveryAttempt, Destination)
    event, log_, attempt, dest = (m._meta.db_table for m in models)
    account = tenant.account.pk
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {event} (account_id, event_id, payload, body, size, received_at) "
            "SELECT %s, 'q-' || g, %s::jsonb, %s, 1024, now() - g * interval '1 second' "
            "FROM generate_series(1, %s) g",
            [account, json.dumps(PAYLOAD), json.dumps(PAYLOAD), EVENTS],
        )
        cursor.execute(
            f"INSERT INTO {log_} (event_id, destination_id, account_id, status, attempt_count, "
            "schedule_offset, received_timestamp, processed_timestamp, last_status_code, "
            "last_error, updated_at, webhook_id) "
            "SELECT e.id, d.id, e.account_id, 'success', 1, 0, e.received_at, "
            "e.received_at + interval '50 milliseconds', 200, '', now(), "
            "'msg_' || replace(gen_random_uuid()::text, '-', '') "
            f"FROM {event} e CROSS JOIN {dest} d WHERE e.account_id = %s AND d.account_id = %s "
            "ORDER BY e.id, d.id",
            [account, account],
        )
        cursor.execute(
            f"INSERT INTO {attempt} (log_id, number, started_at, duration_ms, status_code, "
            "response_headers, response_body, error_class, error_message) "
            "SELECT id, 1, processed_timestamp - interval '12 milliseconds', 12, 200, "
            f"""'{{"content-type": "application/json"}}'::jsonb, '{{"ok":true}}', '', '' """
            f"FROM {log_} WHERE account_id = %s",
            [account],
        )
        cursor.execute("ANALYZE")

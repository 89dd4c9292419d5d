"""Run the benchmarks: `bench/run.py [section ...]` (default: all, in order).

Sections: ingest, delivery, drain, spread, latency, ladder, query, memory, fanout (see
bench/README.md). Each prints its figures beside a reference measured in the same run, as
ratios; nothing here fails on a timing. A full run writes bench/RESULTS.md; a partial run
writes bench/.out/RESULTS.md.

Uses its own PostgreSQL database (dp_bench, dropped and recreated on every run), Redis
database 12 (flushed, nothing else touched), free ports on 127.0.0.1, and stops every process
it started."""

import argparse
import importlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402

SECTIONS = {
    "ingest": "POST /server/incoming_data/ under wrk on the production topology, vs a bare view",
    "delivery": "draining 20,000 queued deliveries with one run_huey process, vs requests",
    "drain": "1,000 events x 10 destinations end to end on the production topology",
    "spread": "the same 10,000 deliveries over 1,000 destinations, vs concentrated",
    "latency": "open loop 100 events/s: accept -> sink, accept -> GraphQL subscriber",
    "ladder": "highest open-loop rate sustained (sink p99 <= 1 s, none lost), 1 and 10 dest.",
    "query": "logs(first: 100) over 100k rows: SQL queries and time vs values()",
    "memory": "run_huey RSS before/after a long delivery run",
    "fanout": "1,000 WebSocket subscribers on one daphne: status change -> receipt",
    "health": "destination health: CPU per delivery on vs off; recovery after an outage",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*", choices=[[], *SECTIONS], metavar="SECTION")
    parser.add_argument("--results", type=Path, help="where to write the Markdown results")
    parser.add_argument(
        "--shared-postgres",
        action="store_true",
        help="use the machine's PostgreSQL on 127.0.0.1:5432 instead of a private cluster",
    )
    args = parser.parse_args(argv)
    selected = args.sections or list(SECTIONS)
    full = selected == list(SECTIONS)
    results = args.results or (
        ROOT / "bench" / "RESULTS.md" if full else ROOT / "bench" / ".out" / "RESULTS.md"
    )

    started = time.monotonic()
    os.chdir(ROOT)
    notes = common.ensure_tools()
    pg_work = Path(tempfile.gettempdir()) / f"dp-bench-pg-{os.getpid()}"
    if args.shared_postgres:
        notes.append("PostgreSQL: the machine's server on 127.0.0.1:5432 (--shared-postgres)")
    else:
        common.log("starting a private PostgreSQL cluster")
        notes.append(common.start_private_postgres(pg_work))
    try:
        return _run_sections(selected, results, notes, started, argv)
    finally:
        common.stop_private_postgres(pg_work)


def _run_sections(
    selected: list[str], results: Path, notes: list[str], started: float, argv: list[str] | None
) -> int:
    os.environ.update(common.child_env())
    common.log(f"recreating database {common.DB_NAME} and migrating it")
    common.reset_database()
    common.flush_redis()
    import django

    django.setup()

    log_dir = Path(tempfile.mkdtemp(prefix="dp-bench-"))
    ctx = common.Context(log_dir=log_dir)
    sections: list[common.Section] = []
    failed = False
    for key in selected:
        common.log(f"section {key}: {SECTIONS[key]}")
        t0 = time.monotonic()
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        try:
            module = importlib.import_module(f"bench.{key}")
            section: common.Section = module.run(ctx)
        except Exception:
            failed = True
            section = common.Section(key, SECTIONS[key])
            section.notes.append("FAILED to run: see the traceback below")
            section.details.append(("Traceback", traceback.format_exc()))
            traceback.print_exc()
        section.seconds = time.monotonic() - t0
        section.notes.append(f"Load average at the start of the section: {load}.")
        sections.append(section)
        print(section.text() + "\n", flush=True)
    total = time.monotonic() - started
    results.parent.mkdir(parents=True, exist_ok=True)
    analysis = ROOT / "bench" / "ANALYSIS.md"
    results.write_text(
        _markdown(sections, notes, total, argv)
        + ("\n" + analysis.read_text() if analysis.exists() else "")
    )
    print(f"Wrote {results.relative_to(ROOT)} ({total:.0f} s in all).")
    if failed or os.environ.get("BENCH_KEEP_LOGS"):
        print(f"Logs of the processes started: {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if failed else 0


def _markdown(
    sections: list[common.Section], notes: list[str], total: float, argv: list[str] | None
) -> str:
    args = " ".join(argv if argv is not None else sys.argv[1:])
    out = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`bench/run.py`); see bench/README.md for what each section "
        "measures. Every figure is printed beside a reference measured in the same run; ratios "
        "matter more than absolutes on a shared 2-core machine.",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "- Command: `make bench` (= `.venv/bin/python bench/run.py`)"
        if not args
        else f"- Command: `.venv/bin/python bench/run.py {args}`",
        f"- Total time: {total:.0f} s",
        *[f"- {line}" for line in _machine()],
        *[f"- {note}" for note in notes],
        "",
        "## Summary",
        "",
        "| section | figure | value | reference | ratio | target | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for section in sections:
        for row in section.rows:
            if row.target:
                cells = [section.key, row.name, row.value, row.reference, row.ratio]
                cells += [row.target, row.verdict]
                out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    out.append("")
    out += [section.markdown() for section in sections]
    return "\n".join(out)


def _machine() -> list[str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    packages = [
        "Django",
        "gunicorn",
        "strawberry-graphql",
        "strawberry-graphql-django",
        "channels",
        "channels-redis",
        "daphne",
        "huey",
        "redis",
        "psycopg",
        "requests",
    ]
    versions = ", ".join(f"{p} {_version(p)}" for p in packages)
    return [
        f"Machine: {os.cpu_count()} CPUs (nproc {_run(['nproc'])}), "
        f"{mem_kib / 1024 / 1024:.1f} GiB memory, {cpu}, Linux {platform.release()}",
        f"Python {platform.python_version()}; {versions}",
        f"py-spy {common.tool_version('py_spy')} (bench/.tools, not in requirements.txt)",
        f"PostgreSQL {_pg_version()}; Redis {_redis_version()}; "
        f"{_run(['wrk', '--version']).splitlines()[0].split(' Copyright')[0]}; "
        f"{_run([common.nginx_binary(), '-v']).strip().removeprefix('nginx version: ')}",
    ]


def _version(package: str) -> str:
    try:
        return version(package)
    except Exception:
        return "?"


def _run(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    return (out.stdout or out.stderr).strip() or "?"


def _pg_version() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        return str(cursor.fetchone()[0])


def _redis_version() -> str:
    return str(common.redis_client().info("server")["redis_version"])


if __name__ == "__main__":
    sys.exit(main())

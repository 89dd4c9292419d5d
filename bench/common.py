"""What every benchmark section needs: the environment of the processes it starts, its own
PostgreSQL database and Redis database, child processes with CPU and memory accounting,
an nginx sink, wrk, and the result records that run.py prints and writes to RESULTS.md.

Nothing here imports Django at module level: run.py configures the environment first."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TOOLS = BENCH / ".tools"  # pip --target: py-spy (never installed into .venv)
PYTHON = sys.executable
DAPHNE = str(Path(sys.executable).with_name("daphne"))

PG_SERVER = "postgres://postgres@127.0.0.1:5432"  # the machine's server (fallback)
DB_NAME = "dp_bench"
DATABASE_URL = f"{PG_SERVER}/{DB_NAME}"
PG_POSTMASTER: int | None = None  # pid of the private cluster's postmaster, when it runs
REDIS_DB = 12
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
HUEY_NAME = "dpbench"

CLK_TCK = os.sysconf("SC_CLK_TCK")

# A 1 KB JSON object: the body of every ingest and delivery in the benchmarks.
PAYLOAD: dict[str, Any] = {
    "order_id": 123456,
    "customer": {"id": "cus_0001", "email": "someone@example.com", "name": "Some One"},
    "items": [
        {"sku": f"SKU-{i:04d}", "qty": i % 3 + 1, "price_cents": 1999 + i, "note": "x" * 24}
        for i in range(9)
    ],
    "currency": "EUR",
    "notes": "",
}
PAYLOAD["notes"] = "n" * (1024 - len(json.dumps(PAYLOAD)))
BODY = json.dumps(PAYLOAD)
assert len(BODY) == 1024, len(BODY)


def log(message: str) -> None:
    """Progress on stderr (the figures go to stdout)."""
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- Environment ----------------------------------------------------------------------------


def child_env(**overrides: str) -> dict[str, str]:
    """The environment of every process a benchmark starts, and of run.py itself: bench
    settings, the bench database, Redis DB 12 with our own queue name, loopback deliveries
    allowed (the sinks are on 127.0.0.1), no ingest rate limit, quiet logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="bench.settings",
        SECRET_KEY="bench-only-not-secret",
        DEBUG="0",
        ENCRYPTION_KEYS="YUyEvR7hdW61cRdzeTeEC7FknwCNycWzc4yoHq6xRUA=",  # bench-only key
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=REDIS_URL,
        HUEY_NAME=HUEY_NAME,
        CACHE_KEY_PREFIX=HUEY_NAME,
        DELIVERY_ALLOW_PRIVATE_NETWORKS="1",
        INCOMING_RATE_LIMIT="0",
        WS_MAX_CONNECTIONS_PER_USER="5000",  # the fan-out bench opens 1,000 sockets per user
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT),
    )
    env.update(overrides)
    return env


# Bench-only tools that requirements.txt does not provide (gunicorn and psycopg-pool, which
# the production topology needs, come from requirements.txt and are imported from .venv).
TOOL_PACKAGES = {"py-spy": "bin/py-spy"}
FROM_REQUIREMENTS = ("gunicorn", "psycopg_pool")


def ensure_tools() -> list[str]:
    """Install the bench-only tools (py-spy) into bench/.tools with pip --target when
    missing: the project's .venv is left as it is. wrk and nginx come from Debian (`make
    bench` installs them). Returns notes for RESULTS.md."""
    notes = []
    for module in FROM_REQUIREMENTS:
        try:
            __import__(module)
        except ImportError:
            raise SystemExit(
                f"{module} is missing from .venv: it is in requirements.txt (`make` installs it)"
            ) from None
    missing = [name for name, path in TOOL_PACKAGES.items() if not (TOOLS / path).exists()]
    if missing:
        log(f"installing {', '.join(missing)} into bench/.tools (pip --target)")
        subprocess.run(
            [
                PYTHON,
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--target",
                str(TOOLS),
                "--upgrade",
                *TOOL_PACKAGES,
            ],
            check=True,
        )
        notes.append(f"{', '.join(missing)} installed into bench/.tools by this run")
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise SystemExit(
                f"{tool} is missing: `make bench` installs it (apt-get install {tool})"
            )
    return notes


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def py_spy_binary() -> str | None:
    path = TOOLS / "bin" / "py-spy"
    return str(path) if path.exists() else shutil.which("py-spy")


def tool_version(module: str) -> str:
    """Version of a package in bench/.tools (py_spy)."""
    for dist in TOOLS.glob(f"{module}-*.dist-info"):
        return dist.name.removesuffix(".dist-info").split("-")[1]
    return "?"


def reset_database() -> None:
    """Drop and recreate the bench database, then migrate it (a subprocess, like a deploy)."""
    import psycopg

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "--no-input", "-v0"],
        cwd=ROOT,
        env=child_env(),
        check=True,
    )


def start_private_postgres(work: Path) -> str:
    """Start a PostgreSQL cluster of our own (initdb with the server's defaults, fsync on,
    loopback on a free port) so that the CPU time of every backend the benchmarks cause is
    counted exactly, whatever else uses the machine's server meanwhile. Returns a note.
    Falls back to the machine's server on 127.0.0.1:5432 when that is not possible."""
    global PG_SERVER, DATABASE_URL, PG_POSTMASTER
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins or os.geteuid() != 0:
        return "PostgreSQL: the machine's server on 127.0.0.1:5432 (shared CPU accounting)"
    bindir = bins[-1].parent
    data = work / "pgdata"
    work.mkdir(parents=True, exist_ok=True)
    shutil.chown(work, "postgres")
    port = free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *as_postgres,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {work} -c listen_addresses=127.0.0.1 -c max_connections=200"
    if (bindir.parent / "lib" / "pg_stat_statements.so").exists():
        # Loaded but off: `statement_counts()` turns it on around one measured window only
        # (ALTER SYSTEM overrides postgresql.conf, not the command line: set it there).
        options += " -c shared_preload_libraries=pg_stat_statements"
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\npg_stat_statements.track = none\n")
    subprocess.run(
        [
            *as_postgres,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(work / "postgres.log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    PG_POSTMASTER = int((data / "postmaster.pid").read_text().split()[0])
    PG_SERVER = f"postgres://postgres@127.0.0.1:{port}"
    DATABASE_URL = f"{PG_SERVER}/{DB_NAME}"
    return (
        f"PostgreSQL: a private cluster of the machine's PostgreSQL ({bindir.parent.name}), "
        f"initdb defaults, fsync on, 127.0.0.1:{port}, started and removed by this run so that "
        "its CPU time is the benchmarks' alone"
    )


def stop_private_postgres(work: Path) -> None:
    global PG_POSTMASTER
    if PG_POSTMASTER is None:
        return
    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1].parent
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(bindir / "pg_ctl"),
            "-D",
            str(work / "pgdata"),
            "-m",
            "fast",
            "-w",
            "stop",
        ],
        capture_output=True,
        timeout=60,
    )
    PG_POSTMASTER = None
    shutil.rmtree(work, ignore_errors=True)


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


def flush_redis() -> None:
    """Empty Redis DB 12 (ours: queue, cache, channel layer of the bench) and nothing else."""
    redis_client().flushdb()


def reset_delivery_tables() -> None:
    """Remove every event, log and attempt (each section starts from empty tables)."""
    from django.db import connection

    from delivery.models import DeliveryAttempt, DeliveryLog, Event

    tables = ", ".join(m._meta.db_table for m in (DeliveryAttempt, DeliveryLog, Event))
    with connection.cursor() as cursor:
        # No ANALYZE here: it would record the tables as empty, and a persistent connection
        # then keeps the plans it made for that (sequential scans in the foreign-key checks)
        # while the tables grow: PostgreSQL's CPU per event grew 7x during a run that way.
        cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


def fresh_state() -> None:
    flush_redis()
    reset_delivery_tables()
    from django.core.cache import cache

    cache.clear()  # the cache lives in Redis DB 12 too; this also drops the bench process's


def knob(name: str, default: int) -> int:
    """A whole-number setting of the benchmarks from the environment (BENCH_…), for shorter
    trial runs; a malformed value stops the run with the variable's name."""
    raw = os.environ.get(name, "").strip() or str(default)
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"{name} must be a whole number >= 1; got {raw!r}")
    return int(raw)


def knob_list(name: str, default: Sequence[int]) -> list[int]:
    """A comma-separated list of whole numbers (e.g. BENCH_LADDER_RATES=100,200,400)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return list(default)
    parts = [p.strip() for p in raw.split(",")]
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise SystemExit(f"{name} must be whole numbers >= 1, comma-separated; got {raw!r}")
    return [int(p) for p in parts]


# Marks the bench process's own polling statements, so that statement_counts() leaves them out.
BENCH_SQL = "/* bench */"


def count_logs(status: str = "success", *, accounts: Sequence[object] = ()) -> int:
    """Delivery logs in `status` (of `accounts`, or all): one cheap statement, marked."""
    from django.db import connection

    from delivery.models import DeliveryLog

    sql = f"SELECT {BENCH_SQL} count(*) FROM {DeliveryLog._meta.db_table} WHERE status = %s"
    params: list[Any] = [status]
    if accounts:
        sql += " AND account_id = ANY(%s)"
        params.append(list(accounts))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.fetchone()[0])


_TRANSACTION_CONTROL = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE)\b", re.I)
# The foreign-key checks PostgreSQL runs itself per inserted row (ri_triggers.c): not the
# application's statements, though pg_stat_statements lists them.
_FOREIGN_KEY_CHECK = re.compile(r"^SELECT 1 FROM ONLY .* FOR KEY SHARE OF x$", re.S)


@dataclass
class StatementCounts:
    """What PostgreSQL executed during a window (pg_stat_statements, top-level statements of
    the bench database), without the bench process's own marked polling."""

    available: bool = False
    note: str = ""
    statements: int = 0  # every statement except transaction control
    commits: int = 0  # explicit COMMITs (a statement in autocommit mode has none)
    rollbacks: int = 0
    foreign_key_checks: int = 0  # run by PostgreSQL itself, not sent by the application
    top: list[tuple[int, str]] = field(default_factory=list)  # (calls, normalised SQL)

    def table(self, per: int, limit: int = 12) -> str:
        lines = [f"{'calls':>8} {'per unit':>9}  statement (normalised, first 110 characters)"]
        for calls, query in self.top[:limit]:
            text = " ".join(query.split())[:110]
            lines.append(f"{calls:8,} {calls / max(per, 1):9.3f}  {text}")
        return "\n".join(lines)


@contextmanager
def statement_counts() -> Iterator[StatementCounts]:
    """Count the SQL statements run in the bench database during the block, with
    pg_stat_statements: the private cluster preloads it with track=none, and this turns it on
    (ALTER SYSTEM + reload, then a reset) for the block only. Unavailable (a note says why) on
    the shared server."""
    import psycopg

    result = StatementCounts()
    if PG_POSTMASTER is None:
        result.note = "pg_stat_statements: only on the private cluster (not --shared-postgres)"
        yield result
        return
    try:
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'top'")
            conn.execute("SELECT pg_reload_conf()")
            time.sleep(0.3)  # the postmaster passes the reload on to every backend
            conn.execute("SELECT pg_stat_statements_reset()")
    except psycopg.Error as error:
        result.note = f"pg_stat_statements unavailable: {error}".strip()
        yield result
        return
    try:
        yield result
    finally:
        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT calls, query FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "ORDER BY calls DESC"
            ).fetchall()
            conn.execute("ALTER SYSTEM RESET pg_stat_statements.track")
            conn.execute("SELECT pg_reload_conf()")
        for calls, query in rows:
            if BENCH_SQL in query or "pg_stat_statements" in query:
                continue
            control = _TRANSACTION_CONTROL.match(query)
            if _FOREIGN_KEY_CHECK.match(query):
                result.foreign_key_checks += calls
            elif control is None:
                result.statements += calls
                result.top.append((calls, query))
            elif control[1].upper() == "COMMIT":
                result.commits += calls
            elif control[1].upper() == "ROLLBACK":
                result.rollbacks += calls
        result.available = True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# --- CPU and memory accounting from /proc ---------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 = state)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(root: int) -> list[int]:
    """`root` and every live process below it."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        fields = _stat(pid)
        if fields:
            children.setdefault(int(fields[1]), []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(roots: Iterable[int]) -> float:
    """CPU time (user + system) used so far by the process trees under `roots`, including
    children that already exited (their time is in their parent's cutime/cstime) — so
    short-lived processes, such as a PostgreSQL backend per connection, are counted."""
    total = 0
    for root in roots:
        for pid in descendants(root):
            fields = _stat(pid)
            if fields:
                total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / CLK_TCK


def roots_named(name: str) -> list[int]:
    """Top processes named `name` (whose parent has another name): e.g. the postmaster."""
    roots = []
    for pid in _all_pids():
        if _comm(pid) == name:
            fields = _stat(pid)
            if fields and _comm(int(fields[1])) != name:
                roots.append(pid)
    return roots


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class CpuMeter:
    """CPU seconds of named groups of processes between `start()` and `stop()`."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self.before: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.wall = 0.0
        self._t0 = 0.0

    def start(self) -> None:
        self.before = {name: cpu_seconds(pids()) for name, pids in self.groups.items()}
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        self.wall = time.monotonic() - self._t0
        self.used = {
            name: cpu_seconds(pids()) - self.before[name] for name, pids in self.groups.items()
        }
        return self.used

    def per(self, count: int) -> dict[str, float]:
        """µs of CPU per unit of work, per group."""
        return {name: used * 1e6 / max(count, 1) for name, used in self.used.items()}


def service_groups() -> dict[str, Callable[[], list[int]]]:
    """The shared services, measured beside our own processes (they include anything else
    that uses the same PostgreSQL or Redis server meanwhile)."""
    return {
        "postgres": lambda: [PG_POSTMASTER] if PG_POSTMASTER else roots_named("postgres"),
        "redis": lambda: roots_named("redis-server"),
    }


# --- Child processes ------------------------------------------------------------------------


@dataclass(eq=False)
class Proc:
    name: str
    popen: "subprocess.Popen[bytes]"
    log_path: Path
    stop_timeout: float = 15.0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    def tree(self) -> list[int]:
        return descendants(self.pid) if self.alive() else []

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, then SIGKILL of its own process group if it has not exited in time."""
        if not self.alive():
            return
        timeout = timeout or self.stop_timeout
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)  # the group started for this process only
            self.popen.wait(timeout)

    def wait_ready(self, ready: Callable[[], bool], timeout: float = 30.0) -> "Proc":
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.alive() or time.monotonic() > deadline:
                state = "exited" if not self.alive() else f"not ready after {timeout}s"
                self.stop()
                raise RuntimeError(f"{self.name} {state}:\n{self.output()}")
            time.sleep(0.05)
        return self


class Processes:
    """The child processes of one section; all stopped when the section ends, even on error."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Proc] = []

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        path = self.log_dir / f"{name}-{len(self.started)}.log"
        with path.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                cwd=ROOT,
                env=env if env is not None else child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so it can be stopped alone
            )
        proc = Proc(name, popen, path)
        self.started.append(proc)
        return proc

    def daphne(self, port: int, env: dict[str, str] | None = None) -> Proc:
        argv = [DAPHNE, "-b", "127.0.0.1", "-p", str(port), "project.asgi:application"]
        proc = self.spawn("daphne", argv, env)
        return proc.wait_ready(lambda: port_open(port))

    def worker(self, threads: int = 8, env: dict[str, str] | None = None) -> Proc:
        """`manage.py run_huey -w <threads> -k thread`, ready once its consumer runs."""
        argv = [PYTHON, "manage.py", "run_huey", "-w", str(threads), "-k", "thread"]
        proc = self.spawn("run_huey", argv, env)
        return proc.wait_ready(lambda: "consumer started" in proc.output(100_000).lower())

    def prod(
        self,
        *,
        workers: int | None = None,
        worker_threads: int | None = None,
        gunicorn_workers: int | None = None,
        env: dict[str, str] | None = None,
    ) -> "Topology":
        """The production topology of README "Production", started by deploy/prod.py (`make
        prod`) with the bench environment: nginx (deploy/nginx.conf) -> gunicorn
        (deploy/gunicorn.conf.py, HTTP) and daphne (WebSocket), `workers` x run_huey (0: none,
        the accept path alone). Ready once nginx answers, gunicorn's workers have booted and
        every run_huey consumer has started. Defaults: BENCH_WORKERS (2),
        BENCH_WORKER_THREADS (16), BENCH_GUNICORN_WORKERS (2)."""
        workers = PROD_WORKERS if workers is None else workers
        worker_threads = worker_threads or PROD_WORKER_THREADS
        gunicorn_workers = gunicorn_workers or PROD_GUNICORN_WORKERS
        port = free_port()
        settings = {
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "GUNICORN_WORKERS": str(gunicorn_workers),
            "WORKERS": str(workers),
            "WORKER_THREADS": str(worker_threads),
        }
        proc = self.spawn(
            "prod", [PYTHON, "deploy/prod.py"], child_env(**{**settings, **(env or {})})
        )
        proc.stop_timeout = 60.0  # prod.py lets the workers finish their in-flight sends
        proc.wait_ready(lambda: bool(_PROD_READY.search(proc.output(100_000))), timeout=120)
        banner = proc.output(100_000)
        ports = dict(_PROD_BANNER.findall(banner))
        topology = Topology(
            proc=proc,
            url=f"http://127.0.0.1:{port}",
            gunicorn_url=f"http://127.0.0.1:{ports['gunicorn']}",
            daphne_url=f"http://127.0.0.1:{ports['daphne']}",
            roots=_prod_roles(proc.pid),
            workers=workers,
            worker_threads=worker_threads,
            gunicorn_workers=gunicorn_workers,
            settings=settings,
        )
        expected = {"gunicorn": 1, "daphne": 1, "nginx": 1, "run_huey": workers}
        if {role: len(pids) for role, pids in topology.roots.items()} != expected:
            raise RuntimeError(f"unexpected processes under deploy/prod.py: {topology.roots}")
        master = topology.roots["gunicorn"][0]
        proc.wait_ready(lambda: len(descendants(master)) > gunicorn_workers, timeout=30)
        proc.wait_ready(
            lambda: proc.output(1_000_000).lower().count("consumer started") >= workers,
            timeout=60,
        )
        topology.warm_up()
        return topology

    def nginx(self, port: int, access_log: bool = False) -> "Nginx":
        sink = Nginx(self.log_dir / f"nginx-{port}", port, access_log)
        proc = self.spawn("nginx", [nginx_binary(), "-p", str(sink.prefix), "-c", "nginx.conf"])
        proc.wait_ready(lambda: port_open(port))
        sink.proc = proc
        return sink

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


@contextmanager
def processes(log_dir: Path) -> Iterator[Processes]:
    group = Processes(log_dir)
    try:
        yield group
    finally:
        group.stop_all()


# The production topology (deploy/prod.py) as the benchmarks start it; BENCH_* overrides.
PROD_WORKERS = knob("BENCH_WORKERS", 2)
PROD_WORKER_THREADS = knob("BENCH_WORKER_THREADS", 16)
PROD_GUNICORN_WORKERS = knob("BENCH_GUNICORN_WORKERS", 2)
ROLES = ("gunicorn", "daphne", "run_huey", "nginx")
_PROD_READY = re.compile(r"^Production topology ready on (http://\S+)$", re.MULTILINE)
_PROD_BANNER = re.compile(r"^\s+(gunicorn|daphne)\s+127\.0\.0\.1:(\d+)", re.MULTILINE)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _prod_roles(prod_pid: int) -> dict[str, list[int]]:
    """The children of deploy/prod.py by role (their own children, such as gunicorn's and
    nginx's workers, are below them)."""
    roles: dict[str, list[int]] = {role: [] for role in ROLES}
    for pid in _all_pids():
        fields = _stat(pid)
        if not fields or int(fields[1]) != prod_pid:
            continue
        argv = _cmdline(pid)
        role = (
            "run_huey"
            if "run_huey" in argv
            else "nginx"
            if argv.startswith("nginx")
            else "gunicorn"
            if "gunicorn" in argv
            else "daphne"
            if "daphne" in argv
            else ""
        )
        if role:
            roles[role].append(pid)
    return roles


def _fixed(pids: list[int]) -> Callable[[], list[int]]:
    return lambda: list(pids)


@dataclass(eq=False)
class Topology:
    """The production topology started by deploy/prod.py: its public URL (nginx), the
    addresses behind nginx, and the root process of each role."""

    proc: Proc  # deploy/prod.py itself: stopping it stops them all
    url: str  # nginx: the production entry point
    gunicorn_url: str
    daphne_url: str
    roots: dict[str, list[int]]  # role -> root pids: gunicorn and nginx masters, each run_huey
    workers: int
    worker_threads: int
    gunicorn_workers: int
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/graphql/"

    def pids(self) -> dict[str, list[int]]:
        """role -> every live pid of that role (masters and their workers)."""
        return {
            role: [pid for root in roots for pid in descendants(root)]
            for role, roots in self.roots.items()
        }

    def cpu_groups(self) -> dict[str, Callable[[], list[int]]]:
        """CpuMeter groups, one per role: cpu_seconds() walks each root's tree, so the workers
        of gunicorn and nginx count under their master (those that exited too)."""
        return {role: _fixed(roots) for role, roots in self.roots.items()}

    def command(self) -> str:
        knobs = " ".join(f"{k}={v}" for k, v in self.settings.items() if k not in ("HOST",))
        return f"{knobs} python deploy/prod.py   # = make prod, with the bench environment"

    def describe(self) -> str:
        return (
            f"nginx -> gunicorn {self.gunicorn_workers} sync workers + daphne, "
            f"{self.workers} x run_huey -w {self.worker_threads}"
        )

    def warm_up(self, requests: int = 40) -> None:
        """Requests to the bare view through nginx, so that every gunicorn worker has served
        one before anything is measured (Django's lazy set-up; no database work)."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            for _ in range(requests):
                conn.request("POST", "/bench/bare/", "{}", {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status != 202:
                    raise RuntimeError(f"bare view through nginx answered {response.status}")
        finally:
            conn.close()


@contextmanager
def prod_topology(
    log_dir: Path,
    *,
    workers: int | None = None,
    worker_threads: int | None = None,
    gunicorn_workers: int | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Topology]:
    """Processes.prod() in a group of its own, stopped when the block ends (also on errors)."""
    with processes(log_dir) as group:
        yield group.prod(
            workers=workers,
            worker_threads=worker_threads,
            gunicorn_workers=gunicorn_workers,
            env=env,
        )


NGINX_CONF = """
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    log_format arrival '$msec $http_webhook_id';
    {access_log}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            default_type application/json;
            return 200 '{{"ok":true}}';
        }}
    }}
}}
"""


@dataclass
class Nginx:
    """nginx answering 200 to everything on 127.0.0.1:<port>, from a config in a temp dir;
    with `access_log`, one line per request: arrival time ($msec) and the webhook-id."""

    prefix: Path
    port: int
    access_log: bool
    proc: Proc | None = None
    _arrivals: dict[str, float] = field(default_factory=dict)
    _read: int = 0
    _requests: int = 0

    def __post_init__(self) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        log = (
            f"access_log {self.prefix}/access.log arrival;"
            if self.access_log
            else "access_log off;"
        )
        conf = NGINX_CONF.format(prefix=self.prefix, port=self.port, access_log=log)
        (self.prefix / "nginx.conf").write_text(conf)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arrivals(self) -> dict[str, float]:
        """webhook-id -> first arrival time (epoch seconds, ms resolution). Reads only what
        the access log gained since the last call."""
        path = self.prefix / "access.log"
        if path.exists():
            with path.open("rb") as log_file:
                log_file.seek(self._read)
                chunk = log_file.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self._read += len(complete)
            for line in complete.decode().splitlines():
                stamp, _, webhook_id = line.partition(" ")
                self._requests += 1
                self._arrivals.setdefault(webhook_id, float(stamp))
        return self._arrivals

    @property
    def requests(self) -> int:
        """Requests logged so far (as of the last arrivals() call): duplicates included."""
        return self._requests


# --- wrk ------------------------------------------------------------------------------------

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{headers}
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: str
    raw: str


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk(
    url: str,
    *,
    script_dir: Path,
    headers: dict[str, str],
    body: str = BODY,
    seconds: int = 10,
    connections: int = 32,
    threads: int = 1,
) -> WrkResult:
    """POST `body` on `connections` keep-alive connections for `seconds` (bounded: wrk stops
    by itself, and the call is killed if it overruns by 30 s)."""
    lines = "\n".join(
        f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()
    )
    script = script_dir / "post.lua"
    script.write_text(WRK_SCRIPT.format(body=_lua_string(body), headers=lines))
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    argv += ["-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    return parse_wrk(out.stdout)


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        return float("nan")
    value, unit = float(match[1]), match[2]
    return value * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def parse_wrk(text: str) -> WrkResult:
    def grab(pattern: str, default: str = "0") -> str:
        match = re.search(pattern, text)
        return match[1] if match else default

    requests = int(grab(r"(\d+) requests in"))
    seconds_text = grab(r"requests in ([\d.]+\w+),", "0s")
    seconds = _duration_ms(seconds_text) / 1e3
    errors = grab(r"(Socket errors:.*)", "")
    return WrkResult(
        requests=requests,
        seconds=seconds,
        rps=float(grab(r"Requests/sec:\s+([\d.]+)")),
        p50_ms=_duration_ms(grab(r"50%\s+(\S+)", "nan")),
        p99_ms=_duration_ms(grab(r"99%\s+(\S+)", "nan")),
        non_2xx=int(grab(r"Non-2xx or 3xx responses: (\d+)")),
        errors=errors,
        raw=text,
    )


# --- Statistics and formatting --------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def fmt(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:,.{digits}f}"


def ratio(value: float, reference: float) -> str:
    if not reference or value != value or reference != reference:
        return "n/a"
    return f"{value / reference:.2f}×"


# --- Results --------------------------------------------------------------------------------


@dataclass
class Row:
    """One figure, beside its reference measured in the same run."""

    name: str
    value: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""  # "met", "missed by …", or empty when there is no target


@dataclass
class Section:
    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: list[tuple[str, str]] = field(default_factory=list)  # (caption, preformatted)
    commands: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def row(self, *args: str, **kwargs: str) -> None:
        self.rows.append(Row(*args, **kwargs))

    def text(self) -> str:
        out = [f"== {self.key}: {self.title} ({self.seconds:.0f} s) =="]
        widths = [36, 18, 22, 8, 16]
        header = ["figure", "value", "reference", "ratio", "target"]
        out.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + "  verdict")
        for r in self.rows:
            cells = [r.name, r.value, r.reference, r.ratio, r.target]
            line = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
            out.append(f"{line}  {r.verdict}".rstrip())
        for note in self.notes:
            out.append(f"  - {note}")
        for caption, block in self.details:
            out.append(f"  {caption}:")
            out.extend("    " + line for line in block.splitlines())
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"## {self.key}: {self.title}", ""]
        if self.commands:
            out += ["Commands:", "", "```sh", *self.commands, "```", ""]
        out += ["| figure | value | reference | ratio | target | verdict |"]
        out += ["| --- | --- | --- | --- | --- | --- |"]
        for r in self.rows:
            cells = [r.name, r.value, r.reference, r.ratio, r.target, r.verdict]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
        out += [f"- {note}" for note in self.notes]
        for caption, block in self.details:
            out += ["", f"{caption}:", "", "```", block.rstrip(), "```"]
        out += ["", f"Section time: {self.seconds:.0f} s.", ""]
        return "\n".join(out)


def verdict(met: bool, how_far: str = "") -> str:
    return "met" if met else f"MISSED{' (' + how_far + ')' if how_far else ''}"


@dataclass
class Context:
    """What sections share within one run."""

    log_dir: Path
    figures: dict[str, float] = field(default_factory=dict)  # e.g. the delivery rate

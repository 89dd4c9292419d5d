"""Real server and worker processes for end-to-end tests.

`start_server("serve")` starts the whole service in one process (embedded mode: the ASGI server
and the Huey consumer threads); `start_server("daphne")` starts the ASGI server alone and
`start_worker()` a `manage.py run_huey` consumer (services mode); the `launch_*` variants do
not wait, so that several processes can start side by side. Each runs with
`project.settings` and an environment from `service_env()` that points it at the test
database, the test run's queue, cache and channel layer — and nothing else — so call these once
the test database exists (tests marked `django_db(transaction=True)`, so that the processes see
committed rows).

Output goes to a file per process; `Process.output()` returns it, and `wait_until` fails with
the tail of every watched process's output. `Processes` tracks what a test started and stops it
all at the end (the `processes` fixture in tests/conftest.py).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from django.conf import settings
from django.db import connection

ServerKind = Literal["serve", "daphne"]

PYTHON = sys.executable
DAPHNE = str(Path(sys.executable).with_name("daphne"))
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass(eq=False)
class Process:
    """One child process; `url` is set for servers, `ready` says when it serves."""

    name: str
    popen: "subprocess.Popen[bytes]"
    log_path: Path
    url: str = ""
    ready: Callable[[], bool] = lambda: True

    def wait_ready(self, timeout: float = START_TIMEOUT) -> "Process":
        """Wait until `ready` holds; kill the process and fail with its output if it does not
        (or if it exits) within `timeout`."""
        try:
            wait_until(self.ready, timeout=timeout, what=f"{self.name} to start", watch=[self])
        except BaseException:
            self.kill()
            raise
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self, tail: int | None = None) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text[-tail:] if tail else text

    def terminate(self) -> None:
        """SIGTERM, without waiting (see `stop`)."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`. Returns the exit code."""
        if self.alive():
            self.terminate()
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def kill(self) -> int:
        """SIGKILL: no cleanup, no shutdown hooks — a crash."""
        if self.alive():
            self.popen.kill()
        return self.popen.wait(STOP_TIMEOUT)

    def report(self, tail: int = 6000) -> str:
        state = "running" if self.alive() else f"exited with {self.popen.returncode}"
        return f"\n----- {self.name} (pid {self.pid}, {state}) -----\n{self.output(tail)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    watch: Iterable[Process] = (),
    interval: float = 0.05,
) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds, or at once when a watched
    process exits, with the output of the watched processes."""
    watched = list(watch)
    deadline = time.monotonic() + timeout
    while not condition():
        dead = [p for p in watched if not p.alive()]
        if dead or time.monotonic() > deadline:
            reason = f"{dead[0].name} exited" if dead else f"timed out after {timeout}s"
            reports = "\n".join(p.report() for p in watched)
            raise AssertionError(f"Waiting for {what}: {reason}\n{reports}")
        time.sleep(interval)


def database_url() -> str:
    """A DATABASE_URL for the database this process uses now (the test database once
    pytest-django created it)."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    if not db["ENGINE"].endswith("postgresql"):
        raise NotImplementedError(db["ENGINE"])
    auth = ""
    if db.get("USER"):
        auth = quote(db["USER"], safe="")
        if db.get("PASSWORD"):
            auth += ":" + quote(db["PASSWORD"], safe="")
        auth += "@"
    host = db.get("HOST") or "localhost"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{quote(db['NAME'], safe='')}"


def huey_sqlite_path() -> str:
    """The SqliteHuey file of the test settings (used by `serve` in embedded mode)."""
    filename = getattr(settings.HUEY, "storage_kwargs", {}).get("filename")
    return str(filename or os.environ.get("HUEY_SQLITE_PATH", ""))


def service_env(**overrides: str) -> dict[str, str]:
    """The environment of a child process: `project.settings` on the test database, queue,
    cache and channel layer, private networks allowed (the sink is on loopback), no rate
    limit, and short retries, leases and timeouts so that recovery happens within a test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        SECRET_KEY=settings.SECRET_KEY,
        DEBUG="0",
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        HUEY_NAME=settings.TEST_RUN_ID,
        CACHE_KEY_PREFIX=settings.TEST_RUN_ID,
        HUEY_SQLITE_PATH=huey_sqlite_path(),
        DELIVERY_ALLOW_PRIVATE_NETWORKS="1",
        INCOMING_RATE_LIMIT="0",
        DELIVERY_RETRY_SCHEDULE="1,1",
        DELIVERY_SWEEP_GRACE_SECONDS="1",
        DELIVERY_CONNECT_TIMEOUT="1",
        DELIVERY_READ_TIMEOUT="2",
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    layers: dict[str, dict[str, Any]] = settings.CHANNEL_LAYERS
    prefix = layers["default"].get("CONFIG", {}).get("prefix")
    if prefix:  # the test run's channel layer keys in Redis
        env["CHANNEL_LAYER_PREFIX"] = prefix
    env.update(overrides)
    return env


def spawn(name: str, command: list[str], env: dict[str, str] | None = None) -> Process:
    """Start `command` in the project directory with its output going to a log file."""
    fd, path = tempfile.mkstemp(prefix=f"dp-{name}-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        popen = subprocess.Popen(
            command,
            cwd=settings.BASE_DIR,
            env=env if env is not None else service_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Process(name, popen, Path(path))


def launch_server(
    kind: ServerKind = "serve", *, port: int | None = None, env: dict[str, str] | None = None
) -> Process:
    """Start `manage.py serve` (ASGI server + queue consumer) or daphne alone; ready once it
    accepts connections. Does not wait (see `start_server`)."""
    port = port or free_port()
    if kind == "serve":
        command = [PYTHON, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)]
    else:
        command = [DAPHNE, "-b", "127.0.0.1", "-p", str(port), "project.asgi:application"]
    process = spawn(kind, command, env)
    process.url = f"http://127.0.0.1:{port}"
    process.ready = lambda: port_open(port)
    return process


def start_server(
    kind: ServerKind = "serve", *, port: int | None = None, env: dict[str, str] | None = None
) -> Process:
    """`launch_server` and wait until it accepts connections."""
    return launch_server(kind, port=port, env=env).wait_ready()


_CONSUMER_STARTED = re.compile(r"Huey consumer started")


def launch_worker(
    *, workers: int = 4, env: dict[str, str] | None = None, args: Sequence[str] = ()
) -> Process:
    """Start `manage.py run_huey -w <workers> -k thread [args]`; ready once its consumer runs.
    Does not wait (see `start_worker`)."""
    command = [PYTHON, "manage.py", "run_huey", "-w", str(workers), "-k", "thread", *args]
    process = spawn("run_huey", command, env)
    process.ready = lambda: bool(_CONSUMER_STARTED.search(process.output()))
    return process


def start_worker(
    *, workers: int = 4, env: dict[str, str] | None = None, args: Sequence[str] = ()
) -> Process:
    """`launch_worker` and wait until its consumer runs."""
    return launch_worker(workers=workers, env=env, args=args).wait_ready()


@dataclass
class Processes:
    """What one test started; `close()` stops everything and removes the log files."""

    started: list[Process] = field(default_factory=list)

    def server(self, kind: ServerKind = "serve", *, wait: bool = True, **env: str) -> Process:
        """A server on a free port with `service_env(**env)`; started unless `wait` is False
        (then call its `wait_ready()`, e.g. after launching a worker beside it)."""
        process = self._track(launch_server(kind, env=service_env(**env)))
        return process.wait_ready() if wait else process

    def worker(
        self, *, workers: int = 4, wait: bool = True, args: Sequence[str] = (), **env: str
    ) -> Process:
        """A `run_huey` consumer with `service_env(**env)` and extra command-line `args`
        (e.g. `--graceful-signal TERM`), like `server`."""
        process = self._track(launch_worker(workers=workers, env=service_env(**env), args=args))
        return process.wait_ready() if wait else process

    def _track(self, process: Process) -> Process:
        self.started.append(process)
        return process

    def wait_until(self, condition: Callable[[], bool], *, timeout: float, what: str) -> None:
        """`wait_until`, failing early (with their output) if a running process dies."""
        wait_until(
            condition,
            timeout=timeout,
            what=what,
            watch=[p for p in self.started if p.alive()],
        )

    def report(self) -> str:
        return "\n".join(p.report() for p in self.started)

    def close(self) -> None:
        for process in self.started:
            process.terminate()
        for process in self.started:
            process.stop()
        print(self.report())  # shown by pytest only when the test failed
        for process in self.started:
            process.log_path.unlink(missing_ok=True)

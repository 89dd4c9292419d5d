"""`make prod`: the production topology of README "Production" on this machine, in one command.

    nginx on HOST:PORT (deploy/nginx.conf)  ->  gunicorn  (HTTP: incoming_data, GraphQL, admin)
                                            ->  daphne    (WebSocket /graphql/ only)
    WORKERS x `manage.py run_huey`          <-  Redis (REDIS_URL), PostgreSQL (DATABASE_URL)

Needs DATABASE_URL (PostgreSQL), REDIS_URL, SECRET_KEY and ENCRYPTION_KEYS in the environment,
and nginx installed. Runs `migrate` and `collectstatic` first, then starts every process with
this environment (NUM_PROXIES defaults to 1: nginx appends to X-Forwarded-For); gunicorn and
daphne listen on free loopback ports, nginx's config is rendered into a temporary run directory.
Ctrl-C or SIGTERM stops them all (workers finish their in-flight deliveries); when one process
exits on its own, the others are stopped too and the exit code is 1.

Settings read here: HOST (127.0.0.1), PORT (8000), GUNICORN_WORKERS (2), WORKERS (1 run_huey
process; 0 for none) and WORKER_THREADS (16 threads each).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
REQUIRED = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "ENCRYPTION_KEYS")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 45.0  # above run_huey's --shutdown-timeout


def fail(message: str) -> None:
    print(f"make prod: {message}", file=sys.stderr)
    sys.exit(2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def env_count(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name) or str(default)
    if not raw.isdigit() or int(raw) < minimum:
        fail(f"{name} must be a whole number >= {minimum}; got {raw!r}")
    return int(raw)


def render_nginx_conf(run_dir: Path, values: dict[str, str]) -> Path:
    """deploy/nginx.conf with its @NAME@ placeholders replaced (outside comments), written
    into `run_dir`."""
    lines = (ROOT / "deploy" / "nginx.conf").read_text().splitlines(keepends=True)
    text = "".join(
        line
        if line.lstrip().startswith("#")
        else re.sub(r"@([A-Z_]+)@", lambda match: values[match.group(1)], line)
        for line in lines
    )
    path = run_dir / "nginx.conf"
    path.write_text(text)
    return path


class Topology:
    """The child processes, started in order and stopped together."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stopping = False

    def run_once(self, *args: str) -> None:
        result = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=self.env, check=False)  # noqa: S603
        if result.returncode:
            fail(f"`manage.py {' '.join(args)}` failed with exit code {result.returncode}")

    def start(self, name: str, argv: list[str]) -> None:
        self.children.append((name, subprocess.Popen(argv, cwd=ROOT, env=self.env)))  # noqa: S603

    def exited(self) -> str:
        """The name of a child that has exited, or ""."""
        return next((name for name, popen in self.children if popen.poll() is not None), "")

    def stop(self) -> None:
        """SIGTERM to every child (nginx first: no new requests), then wait; SIGKILL what is
        left after STOP_TIMEOUT."""
        for _, popen in sorted(self.children, key=lambda child: child[0] != "nginx"):
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for name, popen in self.children:
            try:
                popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"make prod: {name} did not stop in time; killing it", file=sys.stderr)
                popen.kill()
                popen.wait()


def main() -> int:
    missing = [name for name in REQUIRED if not os.environ.get(name, "").strip()]
    if missing:
        fail(f"set {', '.join(missing)} in the environment (see README: Production)")
    if not os.environ["DATABASE_URL"].startswith(("postgres://", "postgresql://")):
        fail("DATABASE_URL must be a PostgreSQL URL (postgres://user:pass@host:5432/name)")
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not nginx:
        fail("nginx is not installed (e.g. apt-get install -y nginx)")
    host = os.environ.get("HOST") or "127.0.0.1"
    port = env_count("PORT", 8000)
    gunicorn_workers = env_count("GUNICORN_WORKERS", 2)
    workers = env_count("WORKERS", 1, minimum=0)  # 0: the workers run elsewhere
    worker_threads = env_count("WORKER_THREADS", 16)

    env = dict(os.environ)
    env.setdefault("NUM_PROXIES", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    topology = Topology(env)
    topology.run_once("migrate", "--no-input")
    topology.run_once("collectstatic", "--no-input", "-v0")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        topology.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    gunicorn_port, daphne_port = free_port(), free_port()
    run_dir = Path(tempfile.mkdtemp(prefix="datapusher-prod-"))
    run_dir.chmod(0o755)  # nginx's workers run as an unprivileged user when started by root
    try:
        conf = render_nginx_conf(
            run_dir,
            {
                "LISTEN": f"{host}:{port}",
                "GUNICORN": f"127.0.0.1:{gunicorn_port}",
                "DAPHNE": f"127.0.0.1:{daphne_port}",
                "STATIC_ROOT": str(ROOT / "staticfiles"),
            },
        )
        gunicorn = [PYTHON, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py"]
        topology.start(
            "gunicorn",
            [*gunicorn, "--bind", f"127.0.0.1:{gunicorn_port}", "--workers", str(gunicorn_workers)],
        )
        daphne = [str(Path(PYTHON).with_name("daphne")), "--proxy-headers", "-b", "127.0.0.1"]
        topology.start("daphne", [*daphne, "-p", str(daphne_port), "project.asgi:application"])
        # As `make worker`: SIGTERM lets in-flight deliveries finish (STACK.md trap 2).
        run_huey = [PYTHON, "manage.py", "run_huey", "--workers", str(worker_threads)]
        graceful = ["--graceful-signal", "TERM", "--shutdown-timeout", "30"]
        for _ in range(workers):
            topology.start("run_huey", [*run_huey, "--worker-type", "thread", *graceful])
        topology.start(
            "nginx",
            [nginx, "-p", str(run_dir), "-c", conf.name, "-e", "error.log", "-g", "daemon off;"],
        )
        listening = [("127.0.0.1", gunicorn_port), ("127.0.0.1", daphne_port), (host, port)]
        deadline = time.monotonic() + START_TIMEOUT
        while not all(port_open(*address) for address in listening):
            if topology.stopping or topology.exited() or time.monotonic() > deadline:
                problem = topology.exited() and f"{topology.exited()} exited"
                print(f"make prod: not started ({problem or 'stopped'})", file=sys.stderr)
                return 1
            time.sleep(0.1)
        base = f"http://{host}:{port}"
        print(
            f"Production topology ready on {base}\n"
            f"  nginx     {base} (config {conf})\n"
            f"  gunicorn  127.0.0.1:{gunicorn_port}, {gunicorn_workers} sync workers: HTTP\n"
            f"  daphne    127.0.0.1:{daphne_port}: WebSocket /graphql/\n"
            f"  run_huey  {workers} x {worker_threads} threads\n"
            "Stop with Ctrl-C or SIGTERM.",
            flush=True,
        )
        while not topology.stopping:
            if topology.exited():
                print(f"make prod: {topology.exited()} exited; stopping", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        topology.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
        print("make prod: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())

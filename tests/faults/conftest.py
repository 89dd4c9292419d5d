"""What the fault-injection tests share: a private Redis server they may kill and restart
(never the machine's shared one), a way to point this process's queue at it, and helpers to
post events to a real server over HTTP."""

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from django.conf import settings

from tests.processes import free_port, wait_until

SERVICES_ONLY = [
    pytest.mark.slow,
    pytest.mark.faults,
    pytest.mark.services,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not settings.REDIS_URL,
        reason="fault injection needs separate daphne/run_huey processes on a shared queue: "
        "REDIS_URL is not set",
    ),
    pytest.mark.skipif(
        not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"),
        reason="fault injection runs against PostgreSQL: DATABASE_URL is not set",
    ),
]


@dataclass
class PrivateRedis:
    """A `redis-server` of this test alone, on a free port, keeping nothing on disk: killing
    and restarting it loses every key, like a crashed Redis without persistence."""

    port: int = field(default_factory=free_port)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dp-redis-")))
    popen: "subprocess.Popen[bytes] | None" = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        redis_server = shutil.which("redis-server")
        assert redis_server, "redis-server is not installed"
        # The port is reused on restart: clients reconnect to the same address.
        self.popen = subprocess.Popen(
            [
                redis_server,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        wait_until(self.ping, timeout=10, what=f"redis-server on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: a crash, everything in memory is gone."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        self.popen = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.close()


@contextmanager
def queue_on(url: str) -> Iterator[None]:
    """Point this process's Huey (same queue name as the child processes) at the Redis at
    `url`, so that what it enqueues — e.g. `services.logs_sweep()` — reaches their workers."""
    from huey import PriorityRedisHuey
    from huey.contrib.djhuey import HUEY

    private = PriorityRedisHuey(HUEY.name, url=url, results=False, utc=True)
    previous = HUEY.storage
    HUEY.storage = private.storage
    try:
        yield
    finally:
        HUEY.storage = previous
        private.storage.conn.connection_pool.disconnect()


def post_event(
    session: requests.Session, base_url: str, token: str, event_id: str, payload: Any
) -> requests.Response:
    return session.post(
        f"{base_url}/server/incoming_data/",
        data=json.dumps(payload),
        headers={
            "Content-Type": "application/json",
            "CL-X-TOKEN": token,
            "CL-X-EVENT-ID": event_id,
        },
        timeout=30,
    )

"""Shared fixtures: personas (admin, normal user, outsider, anonymous), a GraphQL caller, and
cleanup of what a test left in the cache."""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.test import Client

from identity.auth import token_issue
from identity.models import Account, User
from tests.factories import add_member, make_account, make_user


def pytest_sessionstart(session: pytest.Session) -> None:
    """With REQUIRE_SERVICES=1 (the services run of CI) a missing PostgreSQL or Redis fails the
    run at once instead of letting tests skip."""
    if os.environ.get("REQUIRE_SERVICES") != "1":
        return
    import redis

    if not settings.REDIS_URL or not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        pytest.exit("REQUIRE_SERVICES=1 needs DATABASE_URL (PostgreSQL) and REDIS_URL", 3)
    redis.Redis.from_url(settings.REDIS_URL).ping()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove the keys this run created in Redis (and only those)."""
    if not settings.REDIS_URL:
        return
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(match=f"*{settings.TEST_RUN_ID}*", count=1000):
        client.delete(key)


@pytest.fixture(autouse=True)
def _clean_cache() -> Iterator[None]:
    yield
    from delivery import engine

    # The engine's process-local copies: a later test's destination may reuse an id.
    engine.destination_copies.clear()
    engine.quick_lanes.known.clear()
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        keys = list(client.scan_iter(match=f"{settings.TEST_RUN_ID}:*", count=1000))
        if keys:
            client.delete(*keys)
    else:
        from identity import throttle

        cache.clear()
        throttle.reset()  # in-memory limiter counters are not part of Django's cache


@dataclass
class Persona:
    """A caller of the API: `user` is None for anonymous."""

    name: str
    user: User | None
    token: str | None


@pytest.fixture
def account(db: None) -> Account:
    return make_account(name="Acme")[0]


@pytest.fixture
def admin(account: Account) -> Persona:
    user = make_user("admin@example.com", full_name="Ada Admin")
    add_member(account, user, "ADMIN")
    return Persona("admin", user, token_issue(user=user))


@pytest.fixture
def normal_user(account: Account) -> Persona:
    user = make_user("normal@example.com", full_name="Nora Normal")
    add_member(account, user, "NORMAL_USER")
    return Persona("normal_user", user, token_issue(user=user))


@pytest.fixture
def outsider(db: None) -> Persona:
    user = make_user("outsider@example.com", full_name="Otto Outsider")
    make_account(admin=user, name="Other")
    return Persona("outsider", user, token_issue(user=user))


@pytest.fixture
def anonymous(db: None) -> Persona:
    return Persona("anonymous", None, None)


@pytest.fixture
def personas(
    admin: Persona, normal_user: Persona, outsider: Persona, anonymous: Persona
) -> dict[str, Persona]:
    return {p.name: p for p in (admin, normal_user, outsider, anonymous)}


class GraphQL:
    """Posts operations to /graphql/ through the full Django stack."""

    def __init__(self) -> None:
        self.client = Client()

    def __call__(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        persona: Persona | None = None,
    ) -> dict[str, Any]:
        token = persona.token if persona else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = self.client.post(
            "/graphql/",
            {"query": query, "variables": variables or {}},
            content_type="application/json",
            headers=headers,
        )
        assert response.status_code == 200, response.content
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
def gql(db: None) -> GraphQL:
    return GraphQL()


def error_codes(body: dict[str, Any]) -> list[str]:
    """The `extensions.code` of each top-level GraphQL error."""
    return [error.get("extensions", {}).get("code") for error in body.get("errors", [])]


def payload_codes(payload: dict[str, Any]) -> list[str]:
    """The codes of an OperationInfo payload (empty when the mutation succeeded)."""
    return [message["code"] for message in payload.get("messages", [])]


# --- Delivery: app secret, sink, queue, real processes ----------------------------------------

from tests.processes import Process, Processes  # noqa: E402
from tests.sink import Sink, start_sink  # noqa: E402


@pytest.fixture
def app_secret(account: Account) -> str:
    """A fresh raw app secret of `account`: the CL-X-TOKEN of incoming_data."""
    from identity import secrets

    raw = secrets.new_secret(secrets.APP_SECRET_PREFIX)
    account.secret_hash = secrets.digest(raw)
    account.secret_prefix = secrets.visible_part(raw)
    account.save(update_fields=["secret_hash", "secret_prefix"])
    return raw


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A real HTTP server on loopback that records what it receives (tests/sink.py)."""
    server = start_sink()
    yield server
    server.close()


@pytest.fixture
def enqueued() -> Iterator[list[Any]]:
    """Every Huey task enqueued (or scheduled) during the test, in order."""
    from huey.contrib.djhuey import HUEY
    from huey.signals import SIGNAL_ENQUEUED

    tasks: list[Any] = []

    def record(signal: str, task: Any, *args: Any, **kwargs: Any) -> None:
        tasks.append(task)

    HUEY.signal(SIGNAL_ENQUEUED)(record)
    yield tasks
    HUEY.disconnect_signal(record, SIGNAL_ENQUEUED)


@pytest.fixture
def real_queue() -> Iterator[Any]:
    """Huey with its real storage (SQLite file or Redis, shared with child processes) instead
    of immediate mode, emptied before and after the test."""
    from huey.contrib.djhuey import HUEY

    previous = HUEY.immediate
    HUEY.immediate = False
    HUEY.flush()
    try:
        yield HUEY
    finally:
        HUEY.flush()
        HUEY.immediate = previous


@pytest.fixture
def processes(transactional_db: None, real_queue: Any) -> Iterator[Processes]:
    """Start real servers and workers (tests/processes.py); all are stopped after the test and
    their output is printed (pytest shows it when the test failed)."""
    group = Processes()
    yield group
    group.close()


@dataclass
class Service:
    """A running Data Pusher: its base URL, server process and separate worker (if any)."""

    url: str
    server: Process
    worker: Process | None


@pytest.fixture
def service(processes: Processes) -> Service:
    """The service as it is deployed in this run: daphne + `run_huey` when REDIS_URL is set,
    else `manage.py serve` alone (ASGI server and queue consumer in one process)."""
    if settings.REDIS_URL:
        server = processes.server("daphne", wait=False)
        worker = processes.worker(wait=False)
        return Service(server.url, server.wait_ready(), worker.wait_ready())
    server = processes.server("serve")
    return Service(server.url, server, None)

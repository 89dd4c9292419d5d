"""The production topology of README "Production", as `make prod` starts it (deploy/prod.py):
nginx from deploy/nginx.conf in front of gunicorn (HTTP) and daphne (WebSocket /graphql/ only),
a `run_huey` worker, PostgreSQL and Redis — and database connections that stay bounded on
Django's ASGI path whatever DATABASE_CONN_MAX_AGE says (STACK.md trap 13)."""

import asyncio
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings
from django.db import connection
from gql import Client, GraphQLRequest
from gql.transport.websockets import WebsocketsTransport

from tests.factories import make_account
from tests.faults.conftest import SERVICES_ONLY
from tests.live.conftest import wait_subscribed
from tests.processes import PYTHON, Process, Processes, free_port, port_open, service_env, spawn
from tests.sink import Sink

ROOT = Path(settings.BASE_DIR)
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
needs_nginx = pytest.mark.skipif(
    not NGINX, reason="nginx is not installed (apt-get install -y nginx): deploy/nginx.conf"
)


def services_only(test: Any) -> Any:
    """SERVICES_ONLY of the fault tests (slow, PostgreSQL + Redis, real processes), minus the
    `faults` marker: this is the deployment, not a fault."""
    for mark in reversed([m for m in SERVICES_ONLY if m.name != "faults"]):
        test = mark(test)
    return test


READY = re.compile(r"^Production topology ready on (http://\S+)$", re.MULTILINE)

SUBSCRIPTION = """
subscription ($accountId: ID) {
  logUpdates(accountId: $accountId) { id eventId status }
}"""


def prod_env(**overrides: str) -> dict[str, str]:
    """What an operator exports before `make prod`, on the test database, queue and layer."""
    return service_env(
        PORT=str(free_port()),
        WORKERS="1",
        GUNICORN_WORKERS="2",
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        **overrides,
    )


def start_prod(processes: Processes, env: dict[str, str]) -> tuple[Process, str]:
    process = spawn("prod", [PYTHON, "deploy/prod.py"], env)
    processes.started.append(process)
    process.ready = lambda: bool(READY.search(process.output()))
    process.wait_ready(timeout=90)  # migrate and collectstatic run first
    match = READY.search(process.output())
    assert match
    return process, match.group(1)


def graphql(base: str, query: str, variables: dict[str, Any], token: str = "") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.post(
        f"{base}/graphql/",
        json={"query": query, "variables": variables},
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


async def watch_until_success(base: str, token: str, account_id: str, seen: list[str]) -> None:
    transport = WebsocketsTransport(
        url=base.replace("http://", "ws://") + "/graphql/",
        init_payload={"authToken": token},
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
    )
    async with Client(transport=transport) as session:
        request = GraphQLRequest(SUBSCRIPTION, variable_values={"accountId": account_id})
        async for result in session.subscribe(request):
            seen.append(result["logUpdates"]["status"])
            if seen[-1] == "SUCCESS":
                return


@services_only
@needs_nginx
async def test_make_prod_serves_api_websocket_admin_and_delivers_through_nginx(
    processes: Processes, sink: Sink
) -> None:
    # An operator's natural guess, exported to every process: harmless on the ASGI path.
    env = prod_env(DATABASE_CONN_MAX_AGE="60")
    prod, base = await asyncio.to_thread(start_prod, processes, env)

    signup = await asyncio.to_thread(
        graphql,
        base,
        """mutation ($input: SignupInput!) {
          signup(input: $input) {
            ... on AuthPayload { token } ... on OperationInfo { messages { code } }
          }
        }""",
        {
            "input": {
                "email": "ops@example.com",
                "password": "a long pass phrase 42",
                "accountName": "First",
            }
        },
    )
    token = signup["signup"]["token"]
    created = await asyncio.to_thread(
        graphql,
        base,
        """mutation ($input: AccountCreateInput!) {
          accountCreate(input: $input) {
            ... on AccountSecret { appSecretToken account { id } }
            ... on OperationInfo { messages { code } }
          }
        }""",
        {"input": {"name": "Production"}},
        token,
    )
    account_id = created["accountCreate"]["account"]["id"]
    secret = created["accountCreate"]["appSecretToken"]
    destination = await asyncio.to_thread(
        graphql,
        base,
        """mutation ($input: DestinationCreateInput!) {
          destinationCreate(input: $input) {
            ... on Destination { id } ... on OperationInfo { messages { code } }
          }
        }""",
        {"input": {"accountId": account_id, "url": f"{sink.url}/prod", "httpMethod": "POST"}},
        token,
    )
    assert destination["destinationCreate"]["id"]

    seen: list[str] = []
    watcher = asyncio.create_task(watch_until_success(base, token, account_id, seen))
    await wait_subscribed(account_id, 1, timeout=20)

    # Larger than nginx's in-memory body buffer: it goes through the run directory's temp path.
    payload = {"order": 1, "note": "x" * 200_000}
    response = await asyncio.to_thread(
        requests.post,
        f"{base}/server/incoming_data/",
        data=json.dumps(payload),
        headers={"Content-Type": "application/json", "CL-X-TOKEN": secret},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    await asyncio.wait_for(watcher, timeout=30)
    assert seen == ["QUEUED", "SENDING", "SUCCESS"]
    received = sink.received("/prod")
    assert [json.loads(r.body) for r in received] == [payload]

    # Too large for the service (1 MiB), then for nginx (2 MiB): the same JSON answer.
    for size in (1_500_000, 3_000_000):
        big = await asyncio.to_thread(
            requests.post,
            f"{base}/server/incoming_data/",
            data=b"[" + b" " * size + b"]",
            headers={"Content-Type": "application/json", "CL-X-TOKEN": secret},
            timeout=30,
        )
        assert (big.status_code, big.json()["code"]) == (413, "payload_too_large"), size
    assert len(sink.received()) == 1

    css = await asyncio.to_thread(requests.get, f"{base}/static/admin/css/base.css", timeout=10)
    assert css.status_code == 200
    assert css.headers["Content-Type"] == "text/css"
    admin = await asyncio.to_thread(requests.get, f"{base}/admin/login/", timeout=10)
    assert admin.status_code == 200
    assert "/static/admin/css/base.css" in admin.text
    # The dashboard from gunicorn, its script from STATIC_ROOT through nginx.
    page = await asyncio.to_thread(requests.get, f"{base}/", timeout=10)
    assert page.status_code == 200
    assert "/static/dashboard/dashboard.js" in page.text
    script = await asyncio.to_thread(
        requests.get, f"{base}/static/dashboard/dashboard.js", timeout=10
    )
    assert script.status_code == 200
    assert "logUpdates" in script.text

    prod.terminate()
    assert await asyncio.to_thread(prod.popen.wait, 60) == 0
    assert not port_open(int(base.rsplit(":", 1)[1]))
    assert "stopped" in prod.output()


@services_only
@needs_nginx
def test_accept_after_the_database_dropped_the_connections_is_503_then_202(
    processes: Processes,
) -> None:
    # The accept path skips the health check round trip (delivery/ingest.py): a gunicorn
    # worker whose persistent connection the server closed answers its next request 503 with
    # Retry-After, writes nothing, and connects again for the one after.
    from delivery.models import Event
    from tests.factories import make_destination
    from tests.faults.test_postgres_drop import terminate_other_backends

    account, secret = make_account()
    make_destination(account, "http://127.0.0.1:9/x")
    env = {**prod_env(), "WORKERS": "0", "GUNICORN_WORKERS": "1"}  # the accept path only
    _, base = start_prod(processes, env)
    session = requests.Session()

    def post(n: int) -> requests.Response:
        return session.post(
            f"{base}/server/incoming_data/",
            data=json.dumps({"n": n}),
            headers={"Content-Type": "application/json", "CL-X-TOKEN": secret},
            timeout=30,
        )

    before = [post(n) for n in range(4)]  # the gunicorn worker holds a connection now
    assert {r.status_code for r in before} == {202}
    assert terminate_other_backends() >= 1
    after = [post(n) for n in range(4, 12)]
    assert [r.status_code for r in after] == [503] + [202] * 7
    assert after[0].json() == {
        "success": False,
        "code": "unavailable",
        "message": "Temporarily unavailable; retry.",
    }
    assert after[0].headers["Retry-After"] == "5"
    accepted = {r.json()["event_id"] for r in before + after if r.status_code == 202}
    assert set(Event.objects.filter(account=account).values_list("event_id", flat=True)) == (
        accepted
    )


@services_only
@pytest.mark.parametrize("kind", ["daphne", "serve"])
def test_asgi_path_keeps_connections_bounded_with_conn_max_age_set(
    kind: str, processes: Processes
) -> None:
    """DATABASE_CONN_MAX_AGE=60, an operator's natural guess, exported to an ASGI server too:
    16 concurrent clients get no 500 and the server holds at most the pool's connections."""
    _, secret = make_account()
    server = processes.server(kind, DATABASE_CONN_MAX_AGE="60", DATABASE_POOL_MAX_SIZE="8")

    def backends() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
            return int(cursor.fetchone()[0])

    def client(n: int) -> list[int]:
        with requests.Session() as session:
            return [
                session.post(
                    f"{server.url}/server/incoming_data/",
                    data=json.dumps({"n": n, "i": i}),
                    headers={"Content-Type": "application/json", "CL-X-TOKEN": secret},
                    timeout=60,
                ).status_code
                for i in range(25)
            ]

    with ThreadPoolExecutor(16) as pool:
        statuses = [code for codes in pool.map(client, range(16)) for code in codes]

    assert Counter(statuses) == {202: 400}, server.output(3000)
    # The pool's 8, plus the queue consumer threads of `serve` (which pool too) at most.
    assert backends() <= 8


PROBE = (
    "from django.conf import settings; db = settings.DATABASES['default']; "
    "print(db['CONN_MAX_AGE'], db['OPTIONS'].get('pool', {}).get('max_size'))"
)
AS_COMMAND = "import sys; sys.argv = ['manage.py', '{}']; import django; django.setup(); "


@pytest.mark.parametrize(
    ("process", "conn_max_age", "expected"),
    [
        ("import project.wsgi; ", "", "60 None"),  # gunicorn
        (AS_COMMAND.format("run_huey"), "", "60 None"),
        (AS_COMMAND.format("migrate"), "", "0 None"),
        (AS_COMMAND.format("migrate"), "30", "30 None"),
        ("import project.asgi; ", "60", "0 10"),  # daphne
        (AS_COMMAND.format("serve"), "60", "0 10"),
    ],
    ids=["wsgi", "run_huey", "command", "command-set", "asgi-set", "serve-set"],
)
def test_database_connections_follow_the_kind_of_process(
    process: str, conn_max_age: str, expected: str
) -> None:
    """Persistent where threads live as long as the process; never on the ASGI path, which
    pools on PostgreSQL instead, whatever DATABASE_CONN_MAX_AGE says."""
    env = service_env(DATABASE_URL="postgres://user@127.0.0.1:5432/datapusher")
    env.pop("DATABASE_CONN_MAX_AGE", None)
    if conn_max_age:
        env["DATABASE_CONN_MAX_AGE"] = conn_max_age
    result = subprocess.run(
        [sys.executable, "-c", process + PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == expected


def test_prod_refuses_to_start_without_required_settings() -> None:
    env = {
        k: v
        for k, v in service_env().items()
        if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "ENCRYPTION_KEYS"}
    }
    result = subprocess.run(
        [sys.executable, "deploy/prod.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "make prod: set DATABASE_URL, REDIS_URL, SECRET_KEY, ENCRYPTION_KEYS in the environment "
        "(see README: Production)\n"
    )

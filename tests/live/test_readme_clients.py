"""The README's two live examples, run as written — JavaScript by Node with the real
`graphql-ws` and `ws` packages from npm (tests/js: `npm ci --prefix tests/js`), Python with gql
from requirements.txt — against a real server that is restarted while deliveries go on: each
prints every change of every log once, the ones made while it was disconnected included (they
resume with `after`: the cursor of the last change they printed).

Embedded run: `manage.py serve` (its own queue consumer); services run: daphne and a
`run_huey` worker. The server is down while the event in between is accepted and delivered."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from delivery import tasks
from delivery.models import DeliveryLog
from tests.live.conftest import post_event
from tests.processes import Processes, launch_server, service_env, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

JS = Path(settings.BASE_DIR) / "tests" / "js"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(
    (NODE is None or not (JS / "node_modules" / "graphql-ws").is_dir())
    and not os.environ.get("REQUIRE_NODE"),
    reason="needs Node 20+ and `npm ci --prefix tests/js` (`make test` runs it when npm is "
    "there; .ci/run installs both and sets REQUIRE_NODE=1)",
)


def readme_example(language: str) -> str:
    """The `language` block of the README's "Live status for dashboards"."""
    readme = (Path(settings.BASE_DIR) / "README.md").read_text()
    section = readme[readme.index("### Live status for dashboards") :]
    match = re.search(rf"```{language}\n(.*?)```\n", section, re.S)
    assert match, f"no ```{language} block in the README's live section"
    return match.group(1)


CLIENTS = [pytest.param("js", marks=needs_node, id="node"), pytest.param("python", id="python")]


@contextmanager
def readme_client(language: str, tmp_path: Path) -> Iterator[tuple[list[str], Path]]:
    """The command that runs the README's `language` example, and the directory to run it in."""
    if language == "js":
        script = JS / f".example-{tmp_path.name}.mjs"  # beside node_modules, to resolve imports
        command, cwd = [str(NODE), str(script)], JS
    else:
        script = tmp_path / "example.py"
        command, cwd = [sys.executable, str(script)], tmp_path
    script.write_text(readme_example(language))
    try:
        yield command, cwd
    finally:
        script.unlink(missing_ok=True)


def client_env(url: str, token: str, account_id: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "DP_WS_URL": url,
        "DP_TOKEN": token,
        "DP_ACCOUNT_ID": account_id,
    }


class Printed:
    """What the Node process printed: one JSON change per line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def changes(self) -> list[dict[str, Any]]:
        text = self.path.read_text() if self.path.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def statuses(self, log_ids: set[str]) -> dict[str, list[str]]:
        seen: dict[str, list[str]] = {}
        for change in self.changes():
            if change["id"] in log_ids:
                seen.setdefault(change["id"], []).append(change["status"])
        return seen


def log_ids(event_id: str) -> set[str]:
    found = DeliveryLog.objects.filter(event__event_id=event_id).values_list("pk", flat=True)
    return {str(pk) for pk in found}


def delivered(printed: Printed, event_id: str) -> bool:
    ids = log_ids(event_id)
    seen = printed.statuses(ids)
    return len(ids) == 2 and all(seen.get(i, [""])[-1] == "SUCCESS" for i in ids)


@pytest.mark.parametrize("language", CLIENTS)
def test_the_readme_example_sees_every_change_once_across_a_server_restart(
    language: str, processes: Processes, real_queue: Any, tenant: dict[str, Any], tmp_path: Path
) -> None:
    kind = "daphne" if settings.REDIS_URL else "serve"
    server = processes.server(kind)
    if kind == "daphne":
        processes.worker()
    port = server.url.rsplit(":", 1)[1]
    out, err = tmp_path / "client.out", tmp_path / "client.err"
    with (
        readme_client(language, tmp_path) as (command, cwd),
        out.open("wb") as sink_file,
        err.open("wb") as errors,
    ):
        url = f"ws://127.0.0.1:{port}/graphql/"
        env = client_env(url, tenant["token"], tenant["account_id"])
        client = subprocess.Popen(command, cwd=cwd, env=env, stdout=sink_file, stderr=errors)
        printed = Printed(out)
        try:
            # Subscribed once it prints a change: warm-up events until then.
            for n in range(100):
                post_event(server.url, tenant["secret"], f"warm-{n}")
                time.sleep(0.2)
                if printed.changes():
                    break
            post_event(server.url, tenant["secret"], "before")
            wait_until(lambda: delivered(printed, "before"), timeout=30, what="'before' delivered")

            server.terminate()
            assert server.stop() == 0
            # While the server is down: an event accepted and delivered, here and now (the
            # queue in immediate mode), which the client cannot hear of live.
            real_queue.immediate = True
            try:
                tasks.event_accept(
                    account_id=tenant["account_id"], event_id="while-down", payload={"n": 1}, size=8
                )
            finally:
                real_queue.immediate = False
            down = DeliveryLog.objects.filter(event__event_id="while-down")
            assert sorted(down.values_list("status", flat=True)) == ["success", "success"]
            restarted = processes._track(launch_server(kind, port=int(port), env=service_env()))
            restarted.wait_ready()
            wait_until(lambda: delivered(printed, "while-down"), timeout=60, what="catch-up")
            post_event(restarted.url, tenant["secret"], "after")
            wait_until(lambda: delivered(printed, "after"), timeout=30, what="'after' delivered")
            assert client.poll() is None, err.read_text()
        finally:
            client.terminate()
            client.wait(10)

    changes = printed.changes()
    positions = [c["cursor"] for c in changes]
    twice = [c for c in changes if positions.count(c["cursor"]) > 1]
    assert not twice, f"changes printed twice: {twice}\nserver: {processes.report()[-3000:]}"
    # Live before and after the restart: every change of each log, in order; the event of
    # the outage comes from the catch-up, as its logs are now.
    for event_id, statuses in (
        ("before", ["QUEUED", "SENDING", "SUCCESS"]),
        ("while-down", ["SUCCESS"]),
        ("after", ["QUEUED", "SENDING", "SUCCESS"]),
    ):
        ids = log_ids(event_id)
        assert printed.statuses(ids) == dict.fromkeys(ids, statuses), event_id
    assert err.read_text() == ""


@pytest.mark.parametrize("language", CLIENTS)
def test_the_readme_example_stops_at_once_on_a_refused_token(
    language: str, processes: Processes, tmp_path: Path
) -> None:
    server = processes.server("daphne" if settings.REDIS_URL else "serve")
    url = server.url.replace("http://", "ws://") + "/graphql/"
    with readme_client(language, tmp_path) as (command, cwd):
        done = subprocess.run(
            command,
            cwd=cwd,
            env=client_env(url, "dpu_not-a-real-token", "1"),
            capture_output=True,
            text=True,
            timeout=30,
        )

    # 4401 is fatal to graphql-ws (no retries: with 4403 it retried for ~40 s; with
    # retryAttempts: Infinity it would never end) and to the Python loop, and daphne sends
    # the reason.
    assert (done.returncode, done.stdout, done.stderr) == (
        1,
        "",
        "subscription ended: Invalid, expired or revoked token\n",
    )

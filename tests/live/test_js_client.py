"""The README's graphql-ws example, run as written by Node with the real `graphql-ws` and `ws`
packages from npm (tests/js: `npm ci --prefix tests/js`), against a real server that is
restarted while deliveries go on: it prints every change of every log once, the ones made
while it was disconnected included (it resumes with `after`: the cursor of the last change it
printed).

Embedded run: `manage.py serve` (its own queue consumer); services run: daphne and a
`run_huey` worker. The server is down while the event in between is accepted and delivered."""

import json
import os
import re
import shutil
import subprocess
import time
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


def readme_example() -> str:
    """The JavaScript block of the README's "Live status for dashboards"."""
    readme = (Path(settings.BASE_DIR) / "README.md").read_text()
    section = readme[readme.index("### Live status for dashboards") :]
    match = re.search(r"```js\n(.*?)```\n", section, re.S)
    assert match, "no ```js block in the README's live section"
    return match.group(1)


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


@needs_node
def test_the_readme_example_sees_every_change_once_across_a_server_restart(
    processes: Processes, real_queue: Any, tenant: dict[str, Any], tmp_path: Path
) -> None:
    kind = "daphne" if settings.REDIS_URL else "serve"
    server = processes.server(kind)
    if kind == "daphne":
        processes.worker()
    port = server.url.rsplit(":", 1)[1]
    script = JS / f".example-{tmp_path.name}.mjs"  # beside node_modules, to resolve imports
    script.write_text(readme_example())
    out = tmp_path / "node.out"
    with out.open("wb") as sink_file, (tmp_path / "node.err").open("wb") as errors:
        node = subprocess.Popen(
            [str(NODE), str(script)],
            cwd=JS,
            env={
                "PATH": "/usr/bin:/bin",
                "DP_WS_URL": f"ws://127.0.0.1:{port}/graphql/",
                "DP_TOKEN": tenant["token"],
                "DP_ACCOUNT_ID": tenant["account_id"],
            },
            stdout=sink_file,
            stderr=errors,
        )
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
        assert node.poll() is None, (tmp_path / "node.err").read_text()
    finally:
        node.terminate()
        node.wait(10)
        script.unlink(missing_ok=True)

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
    assert (tmp_path / "node.err").read_text() == ""


@needs_node
def test_the_readme_example_stops_at_once_on_a_refused_token(
    processes: Processes, tmp_path: Path
) -> None:
    server = processes.server("daphne" if settings.REDIS_URL else "serve")
    script = JS / f".example-{tmp_path.name}.mjs"
    script.write_text(readme_example())
    try:
        done = subprocess.run(
            [str(NODE), str(script)],
            cwd=JS,
            env={
                "PATH": "/usr/bin:/bin",
                "DP_WS_URL": server.url.replace("http://", "ws://") + "/graphql/",
                "DP_TOKEN": "dpu_not-a-real-token",
                "DP_ACCOUNT_ID": "1",
            },
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        script.unlink(missing_ok=True)

    # 4401 is fatal to graphql-ws: no retries (with 4403 it retried for ~40 s; with
    # retryAttempts: Infinity it would never end), and daphne sends the reason.
    assert (done.returncode, done.stdout, done.stderr) == (
        1,
        "",
        "subscription ended: Invalid, expired or revoked token\n",
    )

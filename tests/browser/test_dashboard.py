"""The dashboard (`/`) in a real Chromium against a real server, queue and sink: log in, watch
deliveries go QUEUED → SENDING → SUCCESS live, filter, retry a failed one, read its attempts,
and keep every change across a server restart (the page resumes from the last cursor it
applied). GraphiQL (`/graphql/`) loads with no network beyond loopback and runs a subscription
with the `Authorization` header people use for queries.

Embedded run: `manage.py serve`; services run: daphne (SERVE_STATIC=1: no nginx here) and a
`run_huey` worker. Screenshots: tests/.artifacts/."""

import json
import re
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher

from delivery import tasks
from delivery.models import DeliveryLog, Destination
from delivery.transport import new_signing_secret
from identity.auth import token_issue
from tests.browser.conftest import Browser, needs_browser
from tests.factories import PASSWORD, make_account, make_user
from tests.live.conftest import post_event
from tests.processes import Process, Processes, launch_server, service_env
from tests.sink import Sink

pytestmark = [pytest.mark.slow, needs_browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def shop(sink: Sink) -> dict[str, Any]:
    """An account whose ADMIN logs in with a password: one destination that answers 200, one
    that answers 400 (a permanent failure) the first time and 200 after."""
    user = make_user("ada@example.com")
    # The server checks with the real hashers (tests hash with MD5 only, for speed).
    hasher = PBKDF2PasswordHasher()
    user.password = hasher.encode(PASSWORD, hasher.salt(), iterations=1000)
    user.save(update_fields=["password"])
    account, secret = make_account(admin=user, name="Shop")
    urls = {"ok": f"{sink.url}/ok", "flaky": f"{sink.url}/status/400,200"}
    for url in urls.values():
        Destination.objects.create(
            account=account, url=url, http_method="POST", signing_secret=new_signing_secret()
        )
    return {"user": user, "account": account, "secret": secret, "urls": urls}


def start(processes: Processes) -> Process:
    kind = "daphne" if settings.REDIS_URL else "serve"
    server = processes.server(kind, SERVE_STATIC="1", GRAPHIQL="1")
    if kind == "daphne":
        processes.worker()
    return server


def rows(browser: Browser) -> list[dict[str, str]]:
    return browser.js(  # type: ignore[return-value]
        "return [...document.querySelectorAll('#logs tbody tr')].map(r => ({...r.dataset,"
        " url: r.children[2].textContent}));"
    )


def row_of(browser: Browser, event_id: str, url: str) -> dict[str, str] | None:
    return next((r for r in rows(browser) if r["event"] == event_id and r["url"] == url), None)


def wait_row(browser: Browser, event_id: str, url: str, **expect: str) -> dict[str, str]:
    condition = " && ".join(
        [
            f"r.dataset.event === {json.dumps(event_id)}",
            f"r.children[2].textContent === {json.dumps(url)}",
        ]
        + [f"r.dataset.{key} === {json.dumps(value)}" for key, value in expect.items()]
    )
    browser.wait(f"[...document.querySelectorAll('#logs tbody tr')].some(r => {condition})")
    found = row_of(browser, event_id, url)
    assert found is not None
    return found


def log_in(browser: Browser, base: str) -> None:
    browser.driver.get(base + "/")
    browser.wait("!document.querySelector('#login').hidden")
    browser.driver.find_element("id", "email").send_keys("ada@example.com")
    browser.driver.find_element("id", "password").send_keys(PASSWORD)
    browser.driver.find_element("id", "login-button").click()
    browser.wait("document.querySelector('#live').dataset.state === 'live'")
    browser.wait("document.querySelectorAll('#destinations tbody tr').length === 2")


def test_the_dashboard_shows_deliveries_live_filters_retries_and_survives_a_restart(
    processes: Processes, real_queue: Any, shop: dict[str, Any], browser: Browser
) -> None:
    server = start(processes)
    ok, flaky = shop["urls"]["ok"], shop["urls"]["flaky"]

    log_in(browser, server.url)
    assert browser.js("return sessionStorage.getItem('dp-token')")
    assert browser.js("return localStorage.length") == 0
    assert all(url.startswith(server.url) for url in browser.resources())

    # Live: every status of each delivery, as it happens.
    post_event(server.url, shop["secret"], "order-1")
    wait_row(browser, "order-1", ok, history="QUEUED SENDING SUCCESS", status="SUCCESS")
    failed = wait_row(browser, "order-1", flaky, history="QUEUED SENDING FAILED")
    browser.wait("document.querySelector('#rate-success').textContent === '50 %'")
    browser.screenshot("dashboard-live")

    # Filter: the failed one only, from the server.
    browser.js("document.querySelector('#f-status').value = 'FAILED';")
    browser.driver.find_element("id", "apply-filters").click()
    browser.wait("document.querySelectorAll('#logs tbody tr').length === 1")
    assert [(r["id"], r["status"]) for r in rows(browser)] == [(failed["id"], "FAILED")]
    browser.screenshot("dashboard-filtered")

    # Retry it (ADMIN), back on the unfiltered view: the sink answers 200 this time.
    browser.js("document.querySelector('#f-status').value = '';")
    browser.driver.find_element("id", "apply-filters").click()
    browser.wait("document.querySelectorAll('#logs tbody tr').length === 2")
    browser.driver.find_element(
        "css selector", f"#logs tr[data-id='{failed['id']}'] button.retry"
    ).click()
    wait_row(browser, "order-1", flaky, history="QUEUED SENDING SUCCESS", status="SUCCESS")
    assert DeliveryLog.objects.get(pk=failed["id"]).status == "success"

    # Its attempts: the 400, then the 200.
    browser.driver.find_element("css selector", f"#logs tr[data-id='{failed['id']}']").click()
    browser.wait("document.querySelectorAll('#detail tbody tr').length === 2")
    attempts = browser.js(
        "return [...document.querySelectorAll('#detail tbody tr')]"
        ".map(r => [r.children[0].textContent, r.children[2].textContent]);"
    )
    assert attempts == [["1", "400"], ["2", "200"]]
    browser.screenshot("dashboard-attempts")

    # A restart: the page reconnects and gets what changed meanwhile, then goes on live.
    port = int(server.url.rsplit(":", 1)[1])
    server.terminate()
    assert server.stop() == 0
    browser.wait("document.querySelector('#live').dataset.state === 'reconnecting'")
    real_queue.immediate = True  # accepted and delivered while the page cannot hear of it
    try:
        tasks.event_accept(
            account_id=str(shop["account"].pk), event_id="while-down", payload={"n": 1}, size=8
        )
    finally:
        real_queue.immediate = False
    kind = "daphne" if settings.REDIS_URL else "serve"
    restarted = processes._track(
        launch_server(kind, port=port, env=service_env(SERVE_STATIC="1", GRAPHIQL="1"))
    )
    restarted.wait_ready()
    browser.wait("document.querySelector('#live').dataset.state === 'live'", timeout=30)
    wait_row(browser, "while-down", ok, status="SUCCESS", history="SUCCESS")
    post_event(restarted.url, shop["secret"], "order-2")
    wait_row(browser, "order-2", ok, history="QUEUED SENDING SUCCESS")
    wait_row(browser, "order-2", flaky, status="SUCCESS")  # its sink answers 200 from now on
    browser.screenshot("dashboard")

    assert [r["event"] for r in rows(browser)].count("while-down") == 2
    assert browser.js("return document.querySelector('#error').textContent") == ""


def test_a_wrong_password_is_refused_on_the_page(
    processes: Processes, shop: dict[str, Any], browser: Browser
) -> None:
    server = start(processes)
    browser.driver.get(server.url + "/")
    browser.driver.find_element("id", "email").send_keys("ada@example.com")
    browser.driver.find_element("id", "password").send_keys("not the password")
    browser.driver.find_element("id", "login-button").click()

    message = browser.wait("document.querySelector('#login-error').textContent")
    assert "(invalid_credentials)" in str(message)
    assert browser.js("return sessionStorage.getItem('dp-token')") is None
    assert browser.js("return document.querySelector('#main').hidden") is True


def test_graphiql_works_offline_and_subscribes_with_the_authorization_header(
    processes: Processes, shop: dict[str, Any], browser: Browser
) -> None:
    server = start(processes)
    token = token_issue(user=shop["user"])
    query = "subscription { logUpdates { eventId status } }"
    headers = json.dumps({"Authorization": f"Bearer {token}"})
    browser.driver.get(f"{server.url}/graphql/?q={quote(query)}&headers={quote(headers)}")
    browser.wait("document.querySelector('.graphiql-execute-button')")
    assert all(url.startswith(server.url) for url in browser.resources())

    browser.driver.find_element("css selector", ".graphiql-execute-button").click()
    post_event(server.url, shop["secret"], "from-graphiql")
    # The first change of the event's first log: authenticated by the header alone.
    browser.wait(
        "(document.querySelector('.result-window') || {innerText: ''}).innerText"
        ".includes('from-graphiql')"
    )
    result = str(browser.js("return document.querySelector('.result-window').innerText;"))
    browser.screenshot("graphiql")
    assert re.search(r'"eventId":\s*"from-graphiql"', result), result
    assert "errors" not in result

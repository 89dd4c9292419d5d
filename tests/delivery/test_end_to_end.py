"""End to end over real processes: an event POSTed over HTTP to a real server is delivered by
a real queue consumer to the sink. Embedded run: `manage.py serve` alone (SQLite + SqliteHuey);
services run: daphne + `manage.py run_huey` (PostgreSQL + Redis)."""

import json
from typing import Any

import pytest
import requests

from delivery.models import DeliveryAttempt, DeliveryLog, LogStatus
from identity.models import Account
from tests.conftest import Service
from tests.delivery.conftest import sink_destination
from tests.processes import Processes
from tests.sink import Sink, standard_webhooks_valid

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PAYLOAD = {"order": 42, "status": "paid", "customer": {"name": "Ada", "city": "Zürich"}}


def post_event(service: Service, token: str, event_id: str, payload: Any = PAYLOAD) -> Any:
    response = requests.post(
        f"{service.url}/server/incoming_data/",
        data=json.dumps(payload),
        headers={
            "Content-Type": "application/json",
            "CL-X-TOKEN": token,
            "CL-X-EVENT-ID": event_id,
        },
        timeout=10,
    )
    assert response.status_code == 202, response.text
    return response.json()


def logs_of(event_id: str) -> list[DeliveryLog]:
    return list(DeliveryLog.objects.filter(event__event_id=event_id).order_by("destination_id"))


def test_event_reaches_get_post_and_put_destinations(
    service: Service, processes: Processes, sink: Sink, account: Account, app_secret: str
) -> None:
    get = sink_destination(
        account, sink, "/e2e/get", http_method="GET", headers={"X-Tenant": "acme"}
    )
    post = sink_destination(
        account, sink, "/e2e/post", headers={"Authorization": "Bearer dest-token"}
    )
    put = sink_destination(account, sink, "/e2e/put", http_method="PUT", headers={"X-Seq": "3"})

    assert post_event(service, app_secret, "order-42") == {
        "success": True,
        "message": "Data Received",
        "event_id": "order-42",
        "deliveries": 3,
        "duplicate": False,
    }
    processes.wait_until(
        lambda: [log.status for log in logs_of("order-42")] == [LogStatus.SUCCESS] * 3,
        timeout=30,
        what="three successful deliveries",
    )

    logs = logs_of("order-42")
    assert [(log.attempt_count, log.last_status_code) for log in logs] == [(1, 200)] * 3
    assert DeliveryAttempt.objects.count() == 3
    received = {r.path: r for r in sink.received()}
    assert sorted(received) == ["/e2e/get", "/e2e/post", "/e2e/put"]
    by_destination = {log.destination_id: log for log in logs}

    request = received["/e2e/get"]
    assert (request.method, request.body) == ("GET", b"")
    assert request.query["order"] == "42"
    assert json.loads(request.query["customer"]) == PAYLOAD["customer"]
    assert request.headers["x-tenant"] == "acme"
    assert request.headers["webhook-id"] == by_destination[get.pk].webhook_id
    assert standard_webhooks_valid(request, get.signing_secret)

    for method, destination, header in (
        ("POST", post, ("authorization", "Bearer dest-token")),
        ("PUT", put, ("x-seq", "3")),
    ):
        request = received[f"/e2e/{method.lower()}"]
        assert request.method == method
        assert json.loads(request.body) == PAYLOAD
        assert request.headers["content-type"] == "application/json"
        assert request.headers[header[0]] == header[1]
        assert request.headers["webhook-id"] == by_destination[destination.pk].webhook_id
        assert standard_webhooks_valid(request, destination.signing_secret)

    assert {r.headers["user-agent"] for r in received.values()} == {"DataPusher/1.0 (+webhooks)"}


def test_500_then_200_is_retried_by_the_real_worker(
    service: Service, processes: Processes, sink: Sink, account: Account, app_secret: str
) -> None:
    destination = sink_destination(account, sink, "/status/500,200")

    post_event(service, app_secret, "flaky-1")
    # The retry is scheduled ~1 s later (DELIVERY_RETRY_SCHEDULE=1,1 in the processes).
    processes.wait_until(
        lambda: [log.status for log in logs_of("flaky-1")] == [LogStatus.SUCCESS],
        timeout=30,
        what="the retried delivery to succeed",
    )

    [log] = logs_of("flaky-1")
    assert (log.attempt_count, log.last_status_code) == (2, 200)
    assert list(DeliveryAttempt.objects.filter(log=log).values_list("number", "status_code")) == [
        (1, 500),
        (2, 200),
    ]
    first, second = sink.received()
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == log.webhook_id
    assert standard_webhooks_valid(first, destination.signing_secret)
    assert standard_webhooks_valid(second, destination.signing_secret)
    assert second.headers["webhook-timestamp"] >= first.headers["webhook-timestamp"]
    # Huey's two INFO lines per task stay off (settings.LOGGING; run_huey would turn them on),
    # its start-up lines do not.
    consumer = service.worker or service.server
    assert "Executing" not in consumer.output()
    assert " executed in " not in consumer.output()
    if service.worker is not None:
        assert "Huey consumer started" in service.worker.output()

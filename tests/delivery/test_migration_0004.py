"""Migration 0004 gives the logs stored before it the `webhook-id` they were already sent with
(`msg_<log id>`, so receivers still recognise their retries) and their events an empty body
(sent re-serialised, as before); logs created afterwards get random ids."""

import re

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("delivery", "0003_encrypt_destination_rows")]
AFTER = [("delivery", "0004_webhook_id_and_body")]


def test_existing_logs_keep_their_webhook_id_and_events_get_an_empty_body() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    apps = executor.loader.project_state(BEFORE).apps
    Account = apps.get_model("identity", "Account")
    Event = apps.get_model("delivery", "Event")
    DeliveryLog = apps.get_model("delivery", "DeliveryLog")
    account = Account.objects.create(name="Old", secret_hash="old-hash")
    now = timezone.now()
    event = Event.objects.create(
        account_id=account.pk, event_id="old", payload={"b": 1, "a": 2}, size=16, received_at=now
    )
    old = [
        DeliveryLog.objects.create(
            event_id=event.pk, account_id=account.pk, status="retrying", received_timestamp=now
        )
        for _ in range(3)
    ]

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(AFTER)
    # On to the latest migrations, which the models below (and the next tests) expect.
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    from delivery.models import DeliveryLog as Log
    from delivery.models import Event as NewEvent

    assert dict(Log.objects.values_list("pk", "webhook_id")) == {
        log.pk: f"msg_{log.pk}" for log in old
    }
    assert NewEvent.objects.get(pk=event.pk).body == ""
    new = Log.objects.create(event_id=event.pk, account_id=account.pk, received_timestamp=now)
    assert re.fullmatch(r"msg_[0-9a-f]{32}", new.webhook_id)

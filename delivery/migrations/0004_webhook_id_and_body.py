"""`DeliveryLog.webhook_id` (random, unique) and `Event.body` (the bytes received).

Existing logs keep the id they were already sent with, `msg_<log id>`, so a log that is
retried after the upgrade is still recognised by receivers that de-duplicate; new logs get a
random one. Existing events get an empty body: they are sent re-serialised, as before."""

from typing import Any

from django.db import migrations, models
from django.db.models import CharField, Value
from django.db.models.functions import Cast, Concat

import delivery.models


def legacy_webhook_ids(apps: Any, schema_editor: Any) -> None:
    DeliveryLog = apps.get_model("delivery", "DeliveryLog")
    DeliveryLog.objects.using(schema_editor.connection.alias).update(
        webhook_id=Concat(Value("msg_"), Cast("id", CharField()))
    )


class Migration(migrations.Migration):
    dependencies = [
        ("delivery", "0003_encrypt_destination_rows"),
    ]

    operations = [
        migrations.AddField(
            model_name="event",
            name="body",
            field=models.TextField(
                blank=True,
                default="",
                help_text=(
                    "The body as received (UTF-8 text); empty for events stored before it was "
                    "kept."
                ),
            ),
        ),
        migrations.AlterField(
            model_name="event",
            name="payload",
            field=models.JSONField(help_text="The body parsed, for queries and filters."),
        ),
        migrations.AddField(
            model_name="deliverylog",
            name="webhook_id",
            field=models.CharField(max_length=40, null=True, editable=False),
        ),
        migrations.RunPython(legacy_webhook_ids, migrations.RunPython.noop, elidable=True),
        migrations.AlterField(
            model_name="deliverylog",
            name="webhook_id",
            field=models.CharField(
                default=delivery.models.new_webhook_id, editable=False, max_length=40, unique=True
            ),
        ),
    ]

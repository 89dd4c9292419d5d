import django.utils.timezone
from django.db import migrations, models
from django.db.models import F, Q


def mark_fanned_out(apps, schema_editor):
    # Events stored before this migration got their logs when they were accepted.
    apps.get_model("delivery", "Event").objects.update(fanned_out_at=F("received_at"))


class Migration(migrations.Migration):
    dependencies = [("delivery", "0005_lanes")]

    operations = [
        migrations.AddField(
            model_name="event",
            name="fanned_out_at",
            field=models.DateTimeField(blank=True, null=True, default=django.utils.timezone.now),
        ),
        migrations.RunPython(mark_fanned_out, migrations.RunPython.noop, elidable=True),
        migrations.AddIndex(
            model_name="event",
            index=models.Index(
                condition=Q(fanned_out_at__isnull=True),
                fields=["account", "id"],
                name="event_pending",
            ),
        ),
    ]

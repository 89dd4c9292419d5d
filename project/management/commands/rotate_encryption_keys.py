"""`manage.py rotate_encryption_keys`: move every encrypted value to the first key of
ENCRYPTION_KEYS. The procedure (README: Encryption at rest): prepend a new key, deploy every
process, run this, then drop the old key and deploy again."""

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser

from project import crypto


class Command(BaseCommand):
    help = (
        "Re-encrypt every encrypted column with the first key of ENCRYPTION_KEYS, in batches. "
        "Values already under that key are skipped, so it is safe to run again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size", type=int, default=500, help="Rows per transaction (default 500)."
        )

    def handle(self, *args: Any, batch_size: int, **options: Any) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        for model in apps.get_models():
            if not crypto.encrypted_fields(model):
                continue
            try:
                rewritten, total = crypto.reencrypt(model, batch_size=batch_size)
            except crypto.DecryptionError as error:
                raise CommandError(str(error)) from None
            self.stdout.write(
                f"{model._meta.label}: {rewritten} of {total} rows re-encrypted with the first key."
            )

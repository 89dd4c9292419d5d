"""The migrations that moved destination secrets and headers to encrypted columns: rows stored
in clear before them are encrypted, and migrating back decrypts them again."""

import json
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from delivery.models import Destination
from tests.security.test_secrets import decrypt, raw_destination_columns

BEFORE = [("delivery", "0001_initial")]
AFTER = [("delivery", "0003_encrypt_destination_rows")]


def migrate(targets: list[tuple[str, str]]) -> Any:
    """Migrate to `targets`; returns the historical apps at that state."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_migrations_encrypt_rows_stored_in_clear_and_reverse_decrypts_them() -> None:
    old = migrate(BEFORE)
    try:
        account = old.get_model("identity", "Account").objects.create(
            name="Acme", secret_prefix="dpk_x", secret_hash="h" * 64
        )
        old_destination = old.get_model("delivery", "Destination")
        rows = [
            old_destination.objects.create(
                account_id=account.pk,
                url=f"https://example.com/{n}",
                http_method="POST",
                headers=headers,
                signing_secret=f"whsec_clear{n}",
            )
            for n, headers in enumerate([{"X-Key": "clear-value ☃"}, {}])
        ]

        migrate(AFTER)

        keys = settings.ENCRYPTION_KEYS
        for n, row in enumerate(rows):
            raw_secret, raw_headers = raw_destination_columns(row.pk)
            assert "clear" not in raw_secret + raw_headers
            assert decrypt(raw_secret, *keys) == f"whsec_clear{n}"
            assert json.loads(decrypt(raw_headers, *keys)) == row.headers
        assert list(
            Destination.objects.order_by("pk").values_list("signing_secret", "headers")
        ) == [("whsec_clear0", {"X-Key": "clear-value ☃"}), ("whsec_clear1", {})]

        old = migrate(BEFORE)

        assert list(
            old.get_model("delivery", "Destination")
            .objects.order_by("pk")
            .values_list("signing_secret", "headers")
        ) == [("whsec_clear0", {"X-Key": "clear-value ☃"}), ("whsec_clear1", {})]
    finally:
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

"""Encrypt the signing secrets and headers that 0001 stored in clear (reverse: decrypt them).

Raw SQL on purpose: the fields of the historical model already decrypt on read, and the rows
here are still clear text. A value that already decrypts is left alone, so running this on a
partly encrypted table is safe."""

import json
from typing import Any

from django.db import migrations

BATCH = 500


def _rows(schema_editor: Any, table: str) -> Any:
    """(id, signing_secret, headers) of every row, fetched in batches of BATCH ids."""
    with schema_editor.connection.cursor() as cursor:
        last = 0
        while True:
            cursor.execute(
                f"SELECT id, signing_secret, headers FROM {table} WHERE id > %s "  # noqa: S608
                f"ORDER BY id LIMIT {BATCH}",
                [last],
            )
            batch = cursor.fetchall()
            if not batch:
                return
            yield from batch
            last = batch[-1][0]


def _rewrite(apps: Any, schema_editor: Any, convert: Any) -> None:
    table = schema_editor.connection.ops.quote_name(
        apps.get_model("delivery", "Destination")._meta.db_table
    )
    updates = []
    for pk, secret, headers in _rows(schema_editor, table):
        new = convert(secret, headers)
        if new != (secret, headers):
            updates.append((*new, pk))
    with schema_editor.connection.cursor() as cursor:
        for update in updates:
            cursor.execute(
                f"UPDATE {table} SET signing_secret = %s, headers = %s WHERE id = %s",  # noqa: S608
                update,
            )


def _decrypts(value: str) -> bool:
    from project import crypto

    try:
        crypto.decrypt(value)
    except crypto.DecryptionError:
        return False
    return True


def encrypt_rows(apps: Any, schema_editor: Any) -> None:
    from project import crypto

    def convert(secret: str, headers: Any) -> tuple[str, str]:
        if not _decrypts(secret):
            secret = crypto.encrypt(secret)
        if not isinstance(headers, str):  # a driver that decoded the JSON already
            headers = json.dumps(headers)
        if not _decrypts(headers):
            clear = json.loads(headers or "{}")
            headers = crypto.encrypt(json.dumps(clear, ensure_ascii=False, separators=(",", ":")))
        return secret, headers

    _rewrite(apps, schema_editor, convert)


def decrypt_rows(apps: Any, schema_editor: Any) -> None:
    from project import crypto

    def convert(secret: str, headers: str) -> tuple[str, str]:
        if _decrypts(secret):
            secret = crypto.decrypt(secret)
        if _decrypts(headers):
            headers = crypto.decrypt(headers)
        return secret, headers

    _rewrite(apps, schema_editor, convert)


class Migration(migrations.Migration):
    dependencies = [("delivery", "0002_encrypt_destination_fields")]

    operations = [migrations.RunPython(encrypt_rows, decrypt_rows, elidable=False)]

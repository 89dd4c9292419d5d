"""The committed schema.graphql is the public contract: it must match the code exactly."""

from pathlib import Path

from strawberry.printer import print_schema

from schema import schema

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema.graphql"


def test_committed_schema_matches_the_code() -> None:
    # The same text `manage.py export_schema schema` (`make schema`) writes.
    printed = print_schema(schema)

    assert SCHEMA_FILE.read_text(encoding="utf-8") == printed, (
        "schema.graphql differs from the schema the code builds; run `make schema` and commit "
        "the result if the change is intended."
    )

"""sql/schema.sql is the schema the migrations make: it cannot drift from them."""

from __future__ import annotations

from devtools.schema import SCHEMA_FILE, current_schema


def test_the_schema_file_is_what_the_migrations_make() -> None:
    assert SCHEMA_FILE.read_text() == current_schema(), (
        "sql/schema.sql is stale: run `python -m devtools.schema`"
    )

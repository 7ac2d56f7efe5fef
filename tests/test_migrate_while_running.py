"""A migration that waits for a table's lock does not stall the deployment.

Regression: migrations run while workers run. An ALTER TABLE waiting for its
table's lock (another session's transaction had read the table) made every
later query of that table wait behind it, for as long as that transaction
lasted: here a plain `SELECT count(*) FROM jobs` could not run for as long as
a session sat in a transaction. A migration now waits a short while per try
(lock_timeout), steps back and tries again, and fails after its patience
naming the session in the way, having applied nothing of that file.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from jobsys.errors import MigrationBlocked
from jobsys.pg import migrate as migrate_module
from jobsys.pg.migrate import migrate
from jobsys.pg.paths import sql_dir
from jobsys.settings import get_settings

NEW = "900_a_column.sql"
HOLDER = "migration-test-holder"
# A reader's statement may wait this long: far above a migration's one try
# (2 s), far below "as long as the holder's transaction lasts".
READER_TIMEOUT = "10s"
READS = 5


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database migrated with the shipped files; then one more migration shipped."""
    base = get_settings().database_url
    name = f"{conninfo_to_dict(base)['dbname']}_mig"
    admin = make_conninfo(base, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(base, dbname=name)
    try:
        migrate(url)
        folder = tmp_path / "sql"
        shutil.copytree(sql_dir(), folder)
        (folder / NEW).write_text("ALTER TABLE jobs ADD COLUMN a_column integer;\n")
        monkeypatch.setattr(migrate_module, "sql_dir", lambda: folder)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _holder(url: str) -> psycopg.Connection[Any]:
    """A session in a transaction that has read `jobs` (a worker's, say)."""
    conn = psycopg.connect(url, application_name=HOLDER)
    conn.execute("SELECT count(*) FROM jobs")
    return conn


def _column_exists(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name = 'jobs' AND column_name = 'a_column'"
        ).fetchone()
    return row is not None and row[0] == 1


def test_a_migration_waiting_for_a_table_lets_the_deployment_read_it(scratch: str) -> None:
    holder = _holder(scratch)
    applied: list[Any] = []
    thread = threading.Thread(target=lambda: applied.append(migrate(scratch)), daemon=True)
    thread.start()
    try:
        with psycopg.connect(scratch, autocommit=True) as reader:
            reader.execute(f"SET statement_timeout = '{READER_TIMEOUT}'")
            for _ in range(READS):
                time.sleep(1)
                # Raises QueryCanceled if the read queued behind a waiting ALTER.
                reader.execute("SELECT count(*) FROM jobs").fetchone()
        assert thread.is_alive(), "the migration did not wait for the holder"
    finally:
        holder.close()  # its transaction ends: the migration goes through
    thread.join(60)
    assert applied == [[NEW]]
    assert _column_exists(scratch)


def test_a_migration_blocked_past_its_patience_fails_naming_the_holder(scratch: str) -> None:
    holder = _holder(scratch)
    try:
        with pytest.raises(MigrationBlocked) as raised:
            migrate(scratch, patience_s=3)
        pid = holder.info.backend_pid
        assert NEW in str(raised.value) and f"pid {pid} ({HOLDER}" in str(raised.value)
        assert f"pg_terminate_backend({pid})" in str(raised.value)
    finally:
        holder.close()
    assert not _column_exists(scratch)
    with psycopg.connect(scratch) as conn:
        row = conn.execute("SELECT count(*) FROM schema_migrations WHERE version = 900").fetchone()
    assert row is not None and row[0] == 0
    assert migrate(scratch) == [NEW]  # once the holder is gone

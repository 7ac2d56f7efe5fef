"""The dashboards' read-only role sees what the views show and nothing more.

The attack: a function with a tiny COST, used in a WHERE clause on a view,
is evaluated before the view's own filter and so sees (and can report) rows
the view hides. The reader cannot create such a function (no TEMP, no CREATE
anywhere), and even a role that could is stopped by the views' security
barrier.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import jobsys
from jobsys.api.items import counted_items
from jobsys.settings import get_settings

LEAK = """
CREATE FUNCTION pg_temp.leak(job bigint, st text) RETURNS boolean
LANGUAGE plpgsql COST 0.0000001 AS $$
BEGIN
    RAISE NOTICE 'saw % %', job, st;
    RETURN true;
END;
$$
"""


def _connect() -> psycopg.Connection[Any]:
    return psycopg.connect(get_settings().database_url, autocommit=True, row_factory=dict_row)


def test_the_reader_cannot_create_a_temp_function() -> None:
    with _connect() as conn:
        conn.execute("SET ROLE jobsys_reader")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(LEAK)


def test_the_reader_cannot_create_a_function_in_public() -> None:
    with _connect() as conn:
        conn.execute("SET ROLE jobsys_reader")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(LEAK.replace("pg_temp.leak", "public.leak"))


def test_every_view_the_reader_may_read_is_a_security_barrier() -> None:
    with _connect() as conn:
        rows = conn.execute(
            """
            SELECT c.relname, coalesce(c.reloptions, '{}') AS options
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'v' AND n.nspname = 'public'
              AND has_table_privilege('jobsys_reader', c.oid, 'SELECT')
            """
        ).fetchall()
    assert rows, "the reader can read no view at all"
    unguarded = [r["relname"] for r in rows if "security_barrier=true" not in r["options"]]
    assert unguarded == []


@pytest.fixture
def leaker() -> Iterator[str]:
    """A role with the reader's rights plus TEMP (a deployment that granted too much)."""
    name = f"jobsys_leaker_{uuid.uuid4().hex[:8]}"
    db = psycopg.conninfo.conninfo_to_dict(get_settings().database_url)["dbname"]
    with _connect() as conn:
        conn.execute(f'CREATE ROLE "{name}" NOLOGIN IN ROLE jobsys_reader')
        conn.execute(f'GRANT TEMPORARY ON DATABASE "{db}" TO "{name}"')
    yield name
    with _connect() as conn:
        conn.execute(f'REVOKE TEMPORARY ON DATABASE "{db}" FROM "{name}"')
        # The test's temp function outlives its session until Postgres reaps
        # the temp schema; DROP OWNED takes it (and anything else) now.
        conn.execute(f'DROP OWNED BY "{name}"')
        conn.execute(f'DROP ROLE "{name}"')


def test_a_cheap_function_in_a_where_sees_only_the_rows_the_view_shows(leaker: str) -> None:
    # A final job: active_jobs hides it.
    hidden = jobsys.submit("echo", counted_items(3), name="hidden").id
    assert jobsys.cancel(hidden).status == "revoked"
    seen: list[str] = []
    with _connect() as conn:
        conn.add_notice_handler(lambda diag: seen.append(diag.message_primary or ""))
        conn.execute(f'SET ROLE "{leaker}"')
        conn.execute(LEAK)
        # Any role may steer the planner: a sequential scan evaluates every
        # filter of the scan in cost order, the cheap function first.
        conn.execute("SET enable_indexscan = off")
        conn.execute("SET enable_bitmapscan = off")
        shown = conn.execute("SELECT id FROM active_jobs WHERE pg_temp.leak(id, status)")
        shown_ids = {r["id"] for r in shown.fetchall()}
    assert hidden not in shown_ids
    leaked = [m for m in seen if m.split()[1] == str(hidden)]
    assert leaked == [], f"the function saw a row the view hides: {leaked}"

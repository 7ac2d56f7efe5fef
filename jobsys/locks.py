"""Postgres advisory locks keyed by a name (one job's bootstrap, one job's reconcile)."""

from __future__ import annotations

from jobsys.db import Conn
from jobsys.settings import get_settings


def lock_name(kind: str, job_id: int) -> str:
    """The lock name of `kind` work on `job_id` in this namespace."""
    return f"{get_settings().namespace}:{kind}:{job_id}"


def try_lock(conn: Conn, name: str) -> bool:
    """Take the session-level lock `name` if free; it lasts until unlock or disconnect."""
    row = conn.execute(
        "SELECT pg_try_advisory_lock(hashtextextended(%s, 0)) AS ok", (name,)
    ).fetchone()
    return bool(row and row["ok"])


def unlock(conn: Conn, name: str) -> None:
    """Release the session-level lock `name`."""
    conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (name,))


def try_xact_lock(conn: Conn, name: str) -> bool:
    """Take the lock `name` until the end of the current transaction, if free."""
    row = conn.execute(
        "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0)) AS ok", (name,)
    ).fetchone()
    return bool(row and row["ok"])

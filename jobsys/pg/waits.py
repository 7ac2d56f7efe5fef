"""Bounded waits for a job's row: the writes a person waits on (cancel, set).

Postgres makes a write wait for as long as another transaction holds the
row. A worker frozen in the middle of one (a paused VM, SIGSTOP, a debugger)
holds it for as long as it stays frozen, and `jobsys cancel` waited with it,
saying nothing. These writes wait JOBSYS_LOCK_WAIT_S at most (lock_timeout,
for their own transaction only), then raise JobBusy naming the sessions that
may hold the row; nothing they were to write is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from jobsys.errors import JobBusy
from jobsys.pg.db import Conn, connection
from jobsys.pg.queries import Q
from jobsys.settings import get_settings

# The sessions a busy job's error names at most.
MAX_HOLDERS_SHOWN = 3
# The shortest wait set (lock_timeout 0 would mean no limit at all).
MIN_WAIT_S = 0.05


def limit_lock_wait(conn: Conn, seconds: float) -> None:
    """Within the caller's transaction, give up on a row lock after `seconds`."""
    ms = max(round(max(seconds, MIN_WAIT_S) * 1000), 1)
    conn.execute(Q.set_lock_timeout, {"timeout": f"{ms}ms"})


@contextmanager
def bounded_row_wait(job_id: int) -> Iterator[float]:
    """Yields JOBSYS_LOCK_WAIT_S for `limit_lock_wait`; a lock wait given up on
    inside becomes JobBusy (the transaction inside has rolled back)."""
    wait = get_settings().lock_wait_s
    try:
        yield wait
    except psycopg.errors.LockNotAvailable:
        raise JobBusy(job_id, wait, _holders(job_id, wait)) from None


def _holders(job_id: int, wait_s: float) -> list[tuple[int, str]]:
    """The sessions holding the job's row, if Postgres can tell (its xmax, or the
    members of the multixact it is); else those in a transaction at least
    `wait_s` old: (pid, a line on it) each."""
    with connection() as conn:
        rows = conn.execute(Q.row_holders, {"job_id": job_id}).fetchall()
        if not rows:
            try:
                rows = conn.execute(Q.row_holders_multi, {"job_id": job_id}).fetchall()
            except psycopg.Error:
                rows = []  # the xmax is no multixact: no one Postgres can name
        if not rows:
            rows = conn.execute(
                Q.long_transactions, {"wait_s": wait_s, "limit": MAX_HOLDERS_SHOWN}
            ).fetchall()
    return describe_sessions(rows)


def describe_sessions(rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(pid, a line on it) for each `row_holders` / `long_transactions` row."""
    return [
        (
            r["pid"],
            f"pid {r['pid']} ({r['application_name'] or 'unnamed'}, {r['client'] or 'local'}, "
            f"{r['state'] or 'in a transaction'} for {r['xact_s'] or 0:.0f} s)",
        )
        for r in rows
    ]

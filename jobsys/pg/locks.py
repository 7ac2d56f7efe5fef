"""Per-job locks: one job's bootstrap, one job's reconcile, held across several transactions.

`job_lock` is the only way code takes one: try it, act only if held, and it
is released afterwards whatever happens (or when the holder's connection
dies). How the lock is held is this module's business alone.

The lock is a transaction-level advisory lock taken in a transaction that
stays open on a connection of its own for the whole block. Session-level
advisory locks would not do: behind a transaction-pooling proxy (PgBouncer
`pool_mode = transaction`) a client's next statement may run on another
server session, so a session lock is neither held where the unlock runs nor
exclusive (another client reusing that session "re-takes" it). An open
transaction pins its server session in every pooling mode. The transaction
writes nothing and, under READ COMMITTED, holds no snapshot between
statements, so it does not hold back vacuum; it does occupy one server
connection per held lock (a pooler's pool size must allow for it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from enum import StrEnum

from jobsys.pg.db import Conn, connect_direct, lock_connection
from jobsys.settings import get_settings


class Lock(StrEnum):
    """The per-job locks: which kind of work on one job only one process does at a time."""

    # Bootstrap and every fill of the job's stream (jobsys.bootstrap).
    BOOTSTRAP = "bootstrap"
    # A reconciler pass acting on the job (jobsys.reconciler).
    RECONCILE = "reconcile"
    # Pruning the job's ledger (jobsys.lifecycle.retention).
    PRUNE = "prune"


def lock_name(kind: Lock, job_id: int) -> str:
    """The lock name of `kind` work on `job_id` in this namespace."""
    return f"{get_settings().namespace}:{kind}:{job_id}"


def try_xact_lock(conn: Conn, name: str) -> bool:
    """Take the lock `name` until the end of the current transaction, if free.

    The transaction idles while its holder works (a fill publishes for
    minutes): no idle-in-transaction limit applies to it, whatever the
    session had (behind a transaction-pooling proxy it may be a session the
    main pool set one on, jobsys.pg.db)."""
    row = conn.execute(
        "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0)) AS ok, "
        "set_config('idle_in_transaction_session_timeout', '0', true)",
        (name,),
    ).fetchone()
    return bool(row and row["ok"])


@contextmanager
def job_lock(kind: Lock, job_id: int, conn: Conn | None = None) -> Iterator[bool]:
    """Try the `kind` lock of `job_id`; yields whether this caller holds it.

    Held until the block ends (released even if it raises). `conn` lets a
    caller that locks many jobs in turn reuse one connection for all of them
    (it must be an autocommit connection used for nothing else during the
    block: the lock lives in a transaction open on it); otherwise one of the
    lock pool's connections is held for the block (`db.lock_connection`).
    """
    if conn is None:
        with lock_connection() as own, job_lock(kind, job_id, own) as held:
            yield held
        return
    with ExitStack() as stack:
        stack.enter_context(conn.transaction())
        held = try_xact_lock(conn, lock_name(kind, job_id))
        if not held:
            stack.close()  # nothing to hold: end the empty transaction now
        yield held


def is_locked(kind: Lock, job_id: int) -> bool:
    """Whether someone holds the `kind` lock of `job_id` right now (a snapshot)."""
    with job_lock(kind, job_id) as held:
        return not held


@contextmanager
def exclusive(key: int, url: str | None = None) -> Iterator[None]:
    """Wait for the global lock `key` and hold it for the block (e.g. migrations).

    Same technique as `job_lock`: a transaction-level lock in a transaction
    kept open on a connection of its own, so it holds behind any pooler.
    """
    with connect_direct(url, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        yield

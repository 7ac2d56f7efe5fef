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

A holder that stops (a paused VM, SIGSTOP, a debugger, a hung call) must not
keep its job's lock for as long as it stays stopped: no bootstrap or stream
repair of the job could run again, and the job would never finish. So the
lock's transaction is ended by Postgres once it idles for JOBSYS_LOCK_IDLE_S,
and a holder doing long work shows it is still at it with `keep_locks()`
between steps (a fill, per chunk). A holder whose lock was taken from it
finds out at its next `keep_locks()`, which raises `LockLost`: it stops, and
its work is retried by whoever takes the lock next.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from enum import StrEnum

import psycopg

from jobsys.pg.db import Conn, connect_direct, lock_connection
from jobsys.settings import get_settings

# `keep_locks` touches a lock's session this many times per JOBSYS_LOCK_IDLE_S
# at most: often enough that work between two calls may take most of the
# limit, rarely enough that a small job's one fill touches nothing.
KEEPS_PER_LIMIT = 4


class Lock(StrEnum):
    """The per-job locks: which kind of work on one job only one process does at a time."""

    # Bootstrap and every fill of the job's stream (jobsys.bootstrap).
    BOOTSTRAP = "bootstrap"
    # A reconciler pass acting on the job (jobsys.reconciler).
    RECONCILE = "reconcile"
    # Pruning the job's ledger (jobsys.lifecycle.retention).
    PRUNE = "prune"


class LockLost(RuntimeError):
    """A held per-job lock was taken away: its session idled in its transaction
    past JOBSYS_LOCK_IDLE_S (this process was stopped) and Postgres ended it."""


@dataclass(eq=False)  # one entry per lock taken: removed by identity
class _Held:
    """One lock this thread holds: its name, its session, when it was last touched."""

    name: str
    conn: Conn
    touched: float


# The locks each thread holds, innermost last (a reconcile pass holds a job's
# reconcile lock and, around a stream repair, its bootstrap lock too).
_local = threading.local()


def _held() -> list[_Held]:
    if not hasattr(_local, "held"):
        _local.held = []
    held: list[_Held] = _local.held
    return held


def keep_within_s() -> float:
    """How long work under a per-job lock may go between two `keep_locks()` calls
    (infinite when JOBSYS_LOCK_IDLE_S is 0)."""
    idle_s = get_settings().lock_idle_s
    return idle_s / KEEPS_PER_LIMIT if idle_s else float("inf")


def keep_locks() -> None:
    """Tell Postgres this thread still works under the per-job locks it holds: one
    statement on each lock's session not touched for a while, so Postgres does not
    end it as idle (JOBSYS_LOCK_IDLE_S). Long work under a lock calls this between
    steps. Raises `LockLost` if a lock was taken away meanwhile (this thread was
    stopped past the limit): whoever holds it now does the work."""
    every = keep_within_s()
    now = time.monotonic()
    for held in _held():
        if now - held.touched < every:
            continue
        try:
            held.conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise LockLost(
                f"lost the lock {held.name}: its session was ended after idling "
                f"past JOBSYS_LOCK_IDLE_S ({exc.__class__.__name__}: {exc})"
            ) from exc
        held.touched = now


def lock_name(kind: Lock, job_id: int) -> str:
    """The lock name of `kind` work on `job_id` in this namespace."""
    return f"{get_settings().namespace}:{kind}:{job_id}"


def try_xact_lock(conn: Conn, name: str) -> bool:
    """Take the lock `name` until the end of the current transaction, if free.

    The transaction idles while its holder works (a fill publishes for
    minutes): its idle limit is JOBSYS_LOCK_IDLE_S, which the holder's
    `keep_locks()` resets, not the main pool's JOBSYS_IDLE_TRANSACTION_S
    (behind a transaction-pooling proxy it may be a session the main pool
    set that on, jobsys.pg.db)."""
    idle_ms = round(get_settings().lock_idle_s * 1000)
    row = conn.execute(
        "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0)) AS ok, "
        "set_config('idle_in_transaction_session_timeout', %s, true)",
        (name, f"{idle_ms}ms"),
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
    name = lock_name(kind, job_id)
    with ExitStack() as stack:
        stack.enter_context(conn.transaction())
        held = try_xact_lock(conn, name)
        if not held:
            stack.close()  # nothing to hold: end the empty transaction now
            yield False
            return
        mine = _Held(name, conn, time.monotonic())
        _held().append(mine)
        try:
            yield True
        finally:
            _held().remove(mine)


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

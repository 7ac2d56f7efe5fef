"""Postgres connections: one lazily created pool per process.

The pool is created on first use and re-created after a fork, so Dramatiq's
worker processes and test subprocesses each get their own connections.
Before it is made, one plain connection is tried (`check_first_connect`): a
wrong database, user or password, or a server that is not there, is then
reported at once with Postgres's own reason, instead of after the pool's
wait and its warnings. Once a process has its pool, the pool rides out
Postgres restarts (its wait and per-connection check).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from jobsys.display import one_line, redact
from jobsys.errors import ServiceUnavailable
from jobsys.settings import get_settings

# A connection whose rows are dicts (every connection jobsys hands out).
Conn = psycopg.Connection[DictRow]

# How long the first connection of a process may take before it is reported.
FIRST_CONNECT_TIMEOUT_S = 5
# How long a caller waits for a pooled connection: long enough to ride out a
# Postgres restart, short enough that a CLI user gets the one-line error.
POOL_TIMEOUT_S = 10.0

# Per-job locks (jobsys.pg.locks) hold a connection of their own for a whole
# bootstrap or reconcile. They come from a pool apart from the main one, so
# a lock holder waiting for a connection to work with never waits on
# connections other lock holders keep; this many times the main pool's size
# (a lock is held while its holder works on a main-pool connection).
LOCK_POOL_FACTOR = 2

# A pooled connection handed back less than this long ago is handed out
# again unchecked: it was alive a moment ago, and a hot path (result batches,
# a small job's bootstrap) reuses connections within milliseconds, where a
# check is one more round trip each time. One idle longer is checked, so a
# Postgres restart costs at most the statements of the last second one
# error each (every caller retries: actors, reconcile passes, requests).
POOL_CHECK_IDLE_S = 1.0

# Postgres keeps this many bytes of an application_name.
APPLICATION_NAME_MAX = 63
# What this process's sessions are called before a command names them.
_role = "jobsys"

_lock = threading.Lock()
_pools: dict[str, ConnectionPool] = {}
_pool_pid: int | None = None
# When each pooled connection was last handed back (monotonic seconds).
_returned: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = weakref.WeakKeyDictionary()


def _check(conn: psycopg.Connection[Any]) -> None:
    """The pool's check before handing a connection out (see POOL_CHECK_IDLE_S)."""
    returned = _returned.get(conn)
    if (
        returned is not None
        and time.monotonic() - returned < POOL_CHECK_IDLE_S
        and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    ):
        return
    ConnectionPool.check_connection(conn)


def _configure(conn: psycopg.Connection[Any]) -> None:
    # Autocommit: a statement outside `with conn.transaction():` commits by
    # itself, and every multi-statement unit is an explicit transaction block.
    conn.autocommit = True
    conn.row_factory = dict_row


def _configure_main(conn: psycopg.Connection[Any]) -> None:
    """A main-pool session: `_configure`, and ended by Postgres if left idle inside
    a transaction for JOBSYS_IDLE_TRANSACTION_S.

    A process frozen mid-transaction (a paused VM, SIGSTOP, a debugger) holds
    its rows for as long as it stays frozen: a result batch's job never
    becomes final, and every worker that takes the batch again waits on the
    rows with a thread (tests/test_frozen_worker.py). Ended, the session's
    transaction rolls back and its sender retries it. Set per session, once
    (a setting in the connection string would not pass PgBouncer); the lock
    pool's transactions stay open by design and are exempt
    (jobsys.pg.locks, `try_xact_lock`).
    """
    _configure(conn)
    idle_s = get_settings().idle_transaction_s
    conn.execute(
        "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
        (f"{round(idle_s * 1000)}ms",),
    )


def set_application_role(role: str) -> None:
    """Name this process's sessions after what it is (the CLI: its command), for
    connections made from now on (see `connect_kwargs`)."""
    global _role
    _role = f"jobsys {role}"


def connect_kwargs() -> dict[str, Any]:
    """Connection options every jobsys connection gets.

    Each session is named ``jobsys <command> <pid>`` (`application_name`,
    unless the URL names one): pg_stat_activity, and a busy job's error
    (jobsys.pg.waits), then say which process holds what.

    psycopg prepares a query server-side after a few executions
    (`prepare_threshold`); behind a transaction-pooling proxy the next
    execution may run on another server session, where that prepared
    statement does not exist. JOBSYS_DB_PREPARED_STATEMENTS=false turns it off.
    """
    settings = get_settings()
    out: dict[str, Any] = {}
    if "application_name" not in _url_params(settings.database_url):
        out["application_name"] = f"{_role} {os.getpid()}"[:APPLICATION_NAME_MAX]
    if not settings.db_prepared_statements:
        out["prepare_threshold"] = None
    return out


def _url_params(url: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return {}  # a malformed URL: connecting says what is wrong with it


def get_pool(purpose: str = "main") -> ConnectionPool:
    """This process's connection pool for `purpose` ("main", or "locks" for
    `lock_connection`), created on first use."""
    global _pool_pid
    with _lock:
        if _pool_pid != os.getpid():
            _pools.clear()  # a fork's: the parent's connections are not ours
            _pool_pid = os.getpid()
        pool = _pools.get(purpose)
        if pool is None:
            settings = get_settings()
            if not _pools:
                check_first_connect(settings.database_url)
            size = settings.db_pool_size * (LOCK_POOL_FACTOR if purpose == "locks" else 1)
            pool = _pools[purpose] = ConnectionPool(
                settings.database_url,
                min_size=1,
                max_size=size,
                configure=_configure if purpose == "locks" else _configure_main,
                # A Postgres restart leaves dead connections in the pool;
                # check each one idle for a while before handing it out.
                check=_check,
                open=True,
                name=f"jobsys-{purpose}",
                kwargs=connect_kwargs(),
                timeout=POOL_TIMEOUT_S,
            )
        return pool


class PostgresRefused(ServiceUnavailable):
    """Postgres answered and refused us (no such database or role, a wrong password)."""


def connect_error(exc: psycopg.OperationalError, url: str) -> ServiceUnavailable:
    """One line for a failed connection: Postgres's own reason when it gave one."""
    text = str(exc)
    if "FATAL:" in text:
        cause = " ".join(text.split("FATAL:", 1)[1].split())
        return PostgresRefused(f"Postgres refused the connection to {redact(url)}: {cause}")
    return ServiceUnavailable(
        f"Postgres not reachable at {redact(url)} ({one_line(exc)}): start it (in a jobsys "
        "checkout: `make services`); `jobsys doctor` checks every service"
    )


def check_first_connect(url: str) -> None:
    """Connect once without the pool; raise `connect_error` if that fails."""
    try:
        psycopg.connect(url, connect_timeout=FIRST_CONNECT_TIMEOUT_S, **connect_kwargs()).close()
    except psycopg.OperationalError as exc:
        raise connect_error(exc, url) from None


def close_pool() -> None:
    """Close this process's pools (tests and clean shutdown)."""
    global _pool_pid
    with _lock:
        if _pool_pid == os.getpid():
            for pool in _pools.values():
                pool.close()
        _pools.clear()
        _pool_pid = None


@contextmanager
def connection() -> Iterator[Conn]:
    """A pooled autocommit connection; use ``with conn.transaction():`` to group writes."""
    with get_pool().connection() as conn:
        try:
            yield cast(Conn, conn)
        finally:
            _stamp_return(conn)


@contextmanager
def lock_connection() -> Iterator[Conn]:
    """A pooled autocommit connection to hold a per-job lock on (jobsys.pg.locks):
    no new connection per lock, and no wait on the main pool."""
    with get_pool("locks").connection() as conn:
        try:
            yield cast(Conn, conn)
        finally:
            _stamp_return(conn)


def _stamp_return(conn: psycopg.Connection[Any]) -> None:
    # Stamped here, as the connection goes back, not by the pool's `reset`
    # hook: a pool with `reset` hands every returned connection to its
    # worker thread, a queue put and a thread switch per statement's
    # connection (~8 % of a small-jobs worker's CPU).
    _returned[conn] = time.monotonic()


def connect_direct(url: str | None = None, autocommit: bool = True) -> Conn:
    """A connection outside the pool (migrations, locks held across transactions)."""
    return psycopg.connect(
        url or get_settings().database_url,
        row_factory=dict_row,
        autocommit=autocommit,
        **connect_kwargs(),
    )

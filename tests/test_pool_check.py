"""The pool hands out a connection idle for a while only after checking it.

A connection handed back a moment ago goes out unchecked (a hot path reuses
connections within milliseconds); one idle longer than POOL_CHECK_IDLE_S is
checked first, so a connection Postgres dropped meanwhile (a restart, an
idle timeout, an operator's pg_terminate_backend) is replaced, never handed
to a caller.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from jobsys.pg import db
from jobsys.pg.db import close_pool, connect_direct, connection
from jobsys.settings import reset_settings

IDLE_S = 0.2


@pytest.fixture(autouse=True)
def _own_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # One connection in the pool: the one a test dropped is the one it gets
    # next (a pool of several hands out the one idle longest).
    monkeypatch.setattr(db, "POOL_CHECK_IDLE_S", IDLE_S)
    monkeypatch.setenv("JOBSYS_DB_POOL_SIZE", "1")
    close_pool()
    reset_settings()
    yield
    close_pool()
    monkeypatch.undo()
    reset_settings()


def _pooled_backend() -> int:
    with connection() as conn:
        row = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
    assert row is not None
    return int(row["pid"])


def _terminate(pid: int) -> None:
    with connect_direct() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_connection_dropped_while_idle_is_replaced_before_it_is_handed_out() -> None:
    # Every connection the pool holds is dropped (however many it opened).
    backends = {_pooled_backend() for _ in range(3)}
    for pid in backends:
        _terminate(pid)
    time.sleep(IDLE_S * 2)
    for _ in range(5):
        assert _pooled_backend() not in backends


def test_a_connection_just_handed_back_is_reused_without_a_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(db, "POOL_CHECK_IDLE_S", 60.0)  # however slow this machine is
    pid = _pooled_backend()
    _terminate(pid)
    # Within the idle window the dead connection goes out as it is: the
    # caller's statement fails (and is retried by its caller), no check ran.
    with pytest.raises(psycopg.OperationalError), connection() as conn:
        conn.execute("SELECT 1")
    # The pool drops a broken connection when it comes back: the next is good.
    assert _pooled_backend() != pid

"""Notices of jobs going final: announced in the guarded transition's transaction,
heard by waiters (`Job.wait()`, `jobsys watch`, the demo) on one LISTEN connection
per process.

A notice is only a wake-up: a waiter reads the job's status itself, and polls
as before when no notice comes. Postgres delivers a notice on commit, to
connections listening then; a pooler in transaction mode, a lost connection or
a process that forked leave waiters on their poll, never wrong.
`JOBSYS_DB_LISTEN=false` turns listening off (behind a transaction-pooling
proxy, where a LISTEN stays on whichever server session ran it).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import psycopg
from psycopg import sql

from jobsys.pg.db import connect_direct
from jobsys.settings import get_settings

log = logging.getLogger(__name__)

# The channel a move to a final status is announced on; the payload is the job id.
FINAL_CHANNEL = "jobsys_final"
# How long the listener waits for its LISTEN to be in place before a waiter
# goes on without it (polling).
LISTEN_READY_S = 5.0
# The listener looks this often whether anyone still waits; with nobody for
# IDLE_CLOSE_S it closes its connection (the next waiter opens another).
LISTEN_SLICE_S = 1.0
IDLE_CLOSE_S = 30.0


class FinalWatch:
    """One listening connection per process, waking the waiters of each job."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[int, set[threading.Event]] = {}
        self._listening: threading.Event | None = None

    @contextmanager
    def watching(self, job_id: int) -> Iterator[threading.Event]:
        """An event set when `job_id` is announced final while in this block. The
        listener is in place on entry when it could be: a status read inside
        the block then misses no move."""
        event = threading.Event()
        if not get_settings().db_listen:
            yield event  # never set: the waiter polls
            return
        with self._lock:
            self._waiters.setdefault(job_id, set()).add(event)
            listening = self._start()
        listening.wait(LISTEN_READY_S)
        try:
            yield event
        finally:
            with self._lock:
                events = self._waiters.get(job_id, set())
                events.discard(event)
                if not events:
                    self._waiters.pop(job_id, None)

    def _start(self) -> threading.Event:
        # Under the lock.
        if self._listening is not None:
            return self._listening
        self._listening = threading.Event()
        threading.Thread(
            target=self._listen, args=(self._listening,), name="jobsys-final-watch", daemon=True
        ).start()
        return self._listening

    def _listen(self, listening: threading.Event) -> None:
        try:
            with connect_direct(autocommit=True) as conn:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(FINAL_CHANNEL)))
                listening.set()
                idle_s = 0.0
                while True:
                    for notice in conn.notifies(timeout=LISTEN_SLICE_S):
                        self._wake(notice.payload)
                    with self._lock:
                        idle_s = 0.0 if self._waiters else idle_s + LISTEN_SLICE_S
                        if idle_s >= IDLE_CLOSE_S:
                            # Retired under the lock: a waiter from now on
                            # starts a new listener, never counts on this one.
                            self._retire(listening)
                            break
        except (psycopg.Error, OSError) as exc:
            # Waiters poll; the next one to come starts a listener again.
            log.debug("final notices not heard", extra={"error": repr(exc)})
        finally:
            listening.set()
            with self._lock:
                self._retire(listening)

    def _retire(self, listening: threading.Event) -> None:
        # Under the lock.
        if self._listening is listening:
            self._listening = None

    def _wake(self, payload: str) -> None:
        try:
            job_id = int(payload)
        except ValueError:
            return  # not ours: anyone may NOTIFY on any channel
        with self._lock:
            for event in self._waiters.get(job_id, ()):
                event.set()


_watch = FinalWatch()


def _forget_after_fork() -> None:
    # A forked child has none of its parent's threads, and the lock may have
    # been held by one of them at the fork: it starts afresh.
    global _watch
    _watch = FinalWatch()


os.register_at_fork(after_in_child=_forget_after_fork)


def watching_final(job_id: int) -> AbstractContextManager[threading.Event]:
    """This process's `FinalWatch.watching(job_id)`."""
    return _watch.watching(job_id)

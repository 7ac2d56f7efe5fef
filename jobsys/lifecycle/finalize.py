"""Finishing a job: the one place a job becomes final, and the one follow-up every final job gets.

Every path that can account for a job's last task -- a result batch, a task
too large to publish, the reconciler marking tasks lost or repairing the
counters, a bootstrap of a job with no tasks -- and the cancel that revokes
one, writes inside ``with finishing(conn) as fin:``. `Finisher.finish` is the
only caller of the guarded transition to success or failure (by the failure
threshold, once every task is accounted for), `Finisher.revoke` the only one
to revoked. The block is one top-level transaction; only after it commits
does each job it made final get its follow-up, the same on every path:

1. its stream is deleted (the teardown actor): processors stop serving it;
2. its completion hook, if it has one, is sent (the transition wrote the
   delivery to the outbox in the same statement).

Each is one Dramatiq message. If Redis cannot take one, or a crash comes
between the commit and the follow-up, neither is lost: the reconciler
deletes the stream of a final job (a stray, after JOBSYS_STRAY_GRACE_S) and
resends an overdue hook delivery (after JOBSYS_HOOK_RESEND_AFTER_S). A final
job's stream holds nothing left to run, so the wait costs no work. Nothing
here needs NATS: recording, which finishes most jobs, imports no NATS client.

A caller that holds NATS anyway (the worker recording a result batch, which
acks its messages next) may take the first follow-up on itself:
within ``with teardowns_deferred() as final:`` the jobs made final are
listed in `final` instead of sent to the teardown actor, and the caller
deletes their streams or, failing that, sends them (`send_teardown`). For a
small job that saves one of its four Dramatiq messages; a crash in between
is the crash above.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from psycopg.pq import TransactionStatus

from jobsys.dramatiq.messages import send_hook, send_teardown
from jobsys.lifecycle.states import BY_THRESHOLD, FINALIZABLE, Moved, Status, transition
from jobsys.pg.db import Conn
from jobsys.testing.pauses import Pause, pause

log = logging.getLogger(__name__)


# Jobs made final whose stream deletion the caller took on (`teardowns_deferred`).
_deferred: ContextVar[list[int] | None] = ContextVar("teardowns_deferred", default=None)


@contextmanager
def teardowns_deferred() -> Iterator[list[int]]:
    """Within: the jobs made final are listed in the list yielded instead of sent to
    the teardown actor; the caller deletes their streams or sends them (the
    module's docstring). Hooks are sent as always."""
    final: list[int] = []
    token = _deferred.set(final)
    try:
        yield final
    finally:
        _deferred.reset(token)


class Finisher:
    """The jobs one transaction made final (see `finishing`)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.finished: list[Moved] = []

    def finish(self, job_id: int, reason: str) -> Status | None:
        """success or failure if every task of the job is accounted for (and it is
        queued or started); the status it moved to, or None."""
        moved = transition(self.conn, job_id, BY_THRESHOLD, FINALIZABLE, reason)
        if moved is None:
            return None
        self.finished.append(moved)
        return moved.status

    def revoke(self, job_id: int, reason: str) -> Status | None:
        """canceling -> revoked; the status it moved to, or None if it was not canceling."""
        moved = transition(self.conn, job_id, Status.REVOKED, {Status.CANCELING}, reason)
        if moved is None:
            return None
        self.finished.append(moved)
        return moved.status


@contextmanager
def finishing(conn: Conn) -> Iterator[Finisher]:
    """One top-level transaction on `conn` in which jobs may become final; after it
    commits, each of them gets its follow-up (the module's docstring). Nothing
    follows a transaction that rolled back."""
    if conn.info.transaction_status != TransactionStatus.IDLE:
        # A follow-up must wait for the commit that makes the job final.
        raise RuntimeError("finishing() must not run inside another transaction")
    fin = Finisher(conn)
    with conn.transaction():
        yield fin
    for moved in fin.finished:
        log.info("job finished", extra={"job_id": moved.job_id, "status": str(moved.status)})
        follow_up(moved)


def follow_up(moved: Moved) -> None:
    """What every job gets once it is final: its stream deleted, its hook sent."""
    # The final commit is done; a crash test can stop us right here.
    pause(Pause.AFTER_FINAL_COMMIT, moved.job_id)
    deferred = _deferred.get()
    if deferred is not None:
        deferred.append(moved.job_id)
    else:
        send_teardown_or_leave(moved.job_id)
    if moved.has_hook:
        try:
            send_hook(moved.job_id)
        except Exception as exc:
            # The reconciler sends it once it is overdue (hook_resend_after_s).
            log.warning("hook delivery not enqueued",
                        extra={"job_id": moved.job_id, "error": repr(exc)})  # fmt: skip


def send_teardown_or_leave(job_id: int) -> None:
    """Send a final job's teardown; if Redis cannot take it, the reconciler deletes
    the stream (a stray) in time."""
    try:
        send_teardown(job_id)
    except Exception as exc:
        log.warning("teardown not enqueued; the reconciler deletes the stream",
                    extra={"job_id": job_id, "error": repr(exc)})  # fmt: skip

"""Retention: delete the ledger rows and events of jobs final for longer than
`JOBSYS_RETAIN_DAYS` (default 30). The job rows stay, with their counters,
and say when their ledger was pruned (`ledger_state`, `ledger_pruned_at`).

A job's ledger is deleted in short chunks, each its own transaction over a
range of that job's primary key, so:

- nothing is locked that a result batch of an ACTIVE job waits on: a chunk
  locks only rows of a final job, and the only job row written is the final
  job's own (kept -> pruning -> pruned), never an active job's;
- a late result for the job being pruned moves no row (a final job has no
  pending task, and a deleted row cannot move), so it counts nothing;
- no transaction is long: vacuum and replication see steady small deletes.

A retry copying the job's ledger holds its row FOR SHARE; `begin_prune`
waits for it, then exports and retries refuse the job (LedgerPruned). An
export that started earlier keeps reading its snapshot.

`prune_due` is the reconciler's duty (bounded per pass by a time budget;
an interrupted job is finished by the next pass); `prune` is `jobsys prune`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from psycopg.errors import DeadlockDetected

from jobsys.errors import InvalidInput
from jobsys.pg.db import connection
from jobsys.pg.locks import Lock, job_lock, keep_locks
from jobsys.pg.queries import Q
from jobsys.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Ledger rows per DELETE: ~10-30 ms of work on a small machine, so a chunk
# never holds its few thousand row locks, or a CPU, for long.
PRUNE_CHUNK = 2_000
# Events per DELETE.
EVENT_CHUNK = 2_000
# A chunk's delete that Postgres chose as a deadlock's victim is tried again
# this many times, after a pause that grows each time. A chunk locks its rows
# in task order, as result batches do, so none is expected (one was seen when
# the delete locked in the heap's order); this stays for a lock order no
# statement here foresees.
DEADLOCK_RETRIES = 5
DEADLOCK_PAUSE_S = 0.05
# After each chunk, rest this fraction of the chunk's own time, so pruning
# takes at most ~2/3 of one core's time from running jobs (bench/prune.py).
PRUNE_REST = 0.5
# One reconcile pass prunes for at most this long; the next pass goes on.
PASS_BUDGET_S = 20.0
# Candidate jobs read per query.
PAGE = 100
_EPOCH = datetime(1970, 1, 1).astimezone()


@dataclass
class PrunedJob:
    """One job's pruning (or, in a dry run, what would be pruned)."""

    job_id: int
    status: str
    finished_at: datetime
    tasks: int
    events: int
    complete: bool = True


@dataclass
class PruneReport:
    """What a prune did (or would do)."""

    older_than_days: float
    dry_run: bool
    jobs: list[PrunedJob] = field(default_factory=list)
    # False when the time budget ran out before every due job was pruned.
    complete: bool = True
    skipped_busy: int = 0

    @property
    def tasks(self) -> int:
        """Ledger rows deleted (or that would be)."""
        return sum(j.tasks for j in self.jobs)

    @property
    def events(self) -> int:
        """Events deleted (or that would be)."""
        return sum(j.events for j in self.jobs)

    def as_dict(self) -> dict[str, Any]:
        """The `jobsys prune --json` shape (JSON-ready: also a reconcile run's detail)."""
        return {
            "dry_run": self.dry_run,
            "older_than_days": self.older_than_days,
            "jobs": [{**asdict(j), "finished_at": j.finished_at.isoformat()} for j in self.jobs],
            "tasks_deleted": 0 if self.dry_run else self.tasks,
            "events_deleted": 0 if self.dry_run else self.events,
            "tasks": self.tasks,
            "events": self.events,
            "complete": self.complete,
            "skipped_busy": self.skipped_busy,
        }


def _rest(started: float) -> None:
    time.sleep((time.perf_counter() - started) * PRUNE_REST)


def _delete(query: str, params: dict[str, Any]) -> int:
    """Rows of a job's ledger deleted; again while Postgres picks the delete as a
    deadlock's victim (its statement rolled back whole: nothing of it happened)."""
    attempt = 0
    while True:
        try:
            with connection() as conn:
                return int(conn.execute(query, params).rowcount)
        except DeadlockDetected:
            if attempt == DEADLOCK_RETRIES:
                raise
            attempt += 1
            log.info("prune chunk was a deadlock's victim; again",
                     extra={"job_id": params["job_id"], "attempt": attempt})  # fmt: skip
            time.sleep(DEADLOCK_PAUSE_S * 2**attempt)


def prune_job(
    job_id: int, older_than_s: float, chunk: int = PRUNE_CHUNK, deadline: float | None = None
) -> PrunedJob | None:
    """Delete one final job's ledger and events if it is still past the cutoff.

    None when it is not (anymore) or another pruner holds it. `complete` is
    False if `deadline` (a perf_counter value) came first; the job stays
    'pruning' and a later call finishes it.
    """
    with job_lock(Lock.PRUNE, job_id) as held:
        if not held:
            return None
        with connection() as conn:
            job = conn.execute(
                Q.begin_prune, {"job_id": job_id, "older_than_s": older_than_s}
            ).fetchone()
            if job is None:
                return None
            status_row = conn.execute(Q.get_job, {"job_id": job_id}).fetchone()
        assert status_row is not None
        out = PrunedJob(job_id, status_row["status"], status_row["finished_at"], 0, 0)
        total: int = job["total_count"]
        for lo in range(0, total, chunk):
            keep_locks()
            if deadline is not None and time.perf_counter() > deadline:
                out.complete = False
                return out
            started = time.perf_counter()
            bounds = {"job_id": job_id, "lo": lo, "hi": lo + chunk}
            out.tasks += _delete(Q.prune_task_chunk, bounds)
            _rest(started)
        out.tasks += _delete(Q.prune_task_rest, {"job_id": job_id})
        while True:
            started = time.perf_counter()
            with connection() as conn:
                n = conn.execute(
                    Q.prune_event_chunk, {"job_id": job_id, "limit": EVENT_CHUNK}
                ).rowcount
            out.events += n
            if n < EVENT_CHUNK:
                break
            _rest(started)
        with connection() as conn, conn.transaction():
            conn.execute(Q.prune_hook, {"job_id": job_id})
            conn.execute(Q.finish_prune, {"job_id": job_id})
    log.info("ledger pruned", extra={"job_id": job_id, "tasks": out.tasks, "events": out.events})
    return out


def prune(
    older_than_days: float | None = None,
    dry_run: bool = False,
    *,
    budget_s: float | None = None,
    chunk: int = PRUNE_CHUNK,
) -> PruneReport:
    """Prune (or, dry run, list) every final job finished more than
    `older_than_days` ago (default JOBSYS_RETAIN_DAYS); at most `budget_s` seconds."""
    days = get_settings().retain_days if older_than_days is None else older_than_days
    if days < 0 or days != days:
        raise InvalidInput("older-than: must be 0 or more days")
    older_than_s = days * 86_400
    report = PruneReport(older_than_days=days, dry_run=dry_run)
    deadline = None if budget_s is None else time.perf_counter() + budget_s
    after: tuple[datetime, int] = (_EPOCH, 0)
    while True:
        with connection() as conn:
            rows = conn.execute(
                Q.prunable_jobs,
                {"older_than_s": older_than_s, "after_at": after[0], "after_id": after[1],
                 "limit": PAGE},
            ).fetchall()  # fmt: skip
            if dry_run:
                for r in rows:
                    ev = conn.execute(Q.count_job_events, {"job_id": r["id"]}).fetchone()
                    events = ev["n"] if ev else 0
                    report.jobs.append(
                        PrunedJob(r["id"], r["status"], r["finished_at"], r["total_count"], events)
                    )
        if not rows:
            return report
        after = (rows[-1]["finished_at"], rows[-1]["id"])
        if dry_run:
            continue
        for r in rows:
            if deadline is not None and time.perf_counter() > deadline:
                report.complete = False
                return report
            done = prune_job(r["id"], older_than_s, chunk, deadline)
            if done is None:
                report.skipped_busy += 1
                continue
            report.jobs.append(done)
            if not done.complete:
                report.complete = False
                return report


def prune_due(settings: Settings | None = None) -> PruneReport:
    """Reconciler duty: prune what JOBSYS_RETAIN_DAYS says is due, for at most PASS_BUDGET_S."""
    s = settings or get_settings()
    return prune(s.retain_days, budget_s=PASS_BUDGET_S)

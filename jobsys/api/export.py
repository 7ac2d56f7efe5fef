"""Exporting a job's outcomes: `jobsys results` and `jobsys.results(...)`.

An export reads the job row and its tasks in ONE read-only REPEATABLE READ
snapshot, the tasks through a server-side cursor a few thousand rows at a
time: memory does not grow with the job, and the per-status counts of what
was written equal the job's counter columns as of that snapshot, even while
results are still being counted. (The open snapshot holds back vacuum's
horizon for as long as the export runs; a multi-million-task export takes
tens of seconds.)

Results and payloads are read as text from their `json` columns, which keep
the bytes given, so an export can write them byte for byte.

`--latest` (on a job that was retried): for each task of the job, its
latest outcome across the job and every retry made from it, by original
task number (see jobsys/retry.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from psycopg import IsolationLevel
from psycopg.rows import tuple_row

from jobsys.api.statuses import TASK_STATUSES, one_or_more
from jobsys.errors import JobNotFound, LedgerPruned
from jobsys.models import JobView
from jobsys.pg.db import Conn, connect_direct
from jobsys.pg.queries import Q

log = logging.getLogger(__name__)

# What `--status` accepts: one task status, or all of them.
EXPORT_STATUSES = ("done", "failed", "lost", "cancelled", "all")
# Rows per round trip of the server-side cursor: big enough that the round
# trips cost little, small enough that memory stays a few MB.
FETCH_ROWS = 2_000


def expected_counts(job: JobView) -> dict[str, int]:
    """The job's counter columns by task status (pending = what is not settled)."""
    return {
        "pending": job.pending,
        "done": job.done,
        "failed": job.failed,
        "lost": job.lost,
        "cancelled": job.cancelled,
    }


@dataclass
class Export:
    """One open export: the job as of the snapshot, and its task rows.

    Iterate it once. `counts` fills in as rows are yielded.
    """

    conn: Conn
    job: JobView
    statuses: tuple[str, ...] | None
    latest: bool
    with_payload: bool
    raw: bool
    descendants: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def expected(self) -> dict[str, int] | None:
        """The counters the counts must equal (None with --latest: a chain has no one counter)."""
        if self.latest:
            return None
        wanted = self.statuses or TASK_STATUSES
        counters = expected_counts(self.job)
        return {s: counters[s] for s in wanted if counters[s] or s != "pending"}

    @property
    def columns(self) -> list[str]:
        """The keys of every yielded row, in order (also the CSV header). A failure's
        exception class and traceback (`error_type`, `error_trace`) come after the
        columns exports had before them, so those keep their places."""
        cols = ["task", "status", "result", "error", "deliveries", "finished_at",
                "error_type", "error_trace"]  # fmt: skip
        if self.latest:
            cols.append("job")
        elif self.job.parent_id is not None:
            cols.append("origin_task")
        if self.with_payload:
            cols.append("payload")
        return cols

    def __iter__(self) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {
            "job_id": self.job.job_id,
            "statuses": list(self.statuses) if self.statuses is not None else None,
            "with_payload": self.with_payload,
        }
        if self.latest:
            query = Q.export_latest
            params["descendants"] = self.descendants
        else:
            query = Q.export_tasks
        counts = self.counts
        parse = (lambda text: text) if self.raw else _parse
        child = self.job.parent_id is not None
        with self.conn.cursor(name="jobsys_export", row_factory=tuple_row) as cur:
            cur.itersize = FETCH_ROWS
            cur.execute(query, params)
            for row in cur:
                (task_no, status, result, error, deliveries, finished_at, error_type,
                 error_trace, extra, payload) = row  # fmt: skip
                counts[status] = counts.get(status, 0) + 1
                out: dict[str, Any] = {
                    "task": task_no,
                    "status": status,
                    "result": parse(result),
                    "error": error,
                    "deliveries": deliveries,
                    "finished_at": finished_at,
                    "error_type": error_type,
                    "error_trace": error_trace,
                }
                if self.latest:
                    out["job"] = extra
                elif child:
                    out["origin_task"] = extra
                if self.with_payload:
                    out["payload"] = parse(payload)
                yield out


def _parse(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _check_ledger(job_id: int, state: str, pruned_at: Any) -> None:
    if state != "kept":
        raise LedgerPruned(job_id, pruned_at)


@contextmanager
def open_export(
    job_id: int,
    status: str | Iterable[str] | None = "done",
    *,
    latest: bool = False,
    with_payload: bool = False,
    raw: bool = False,
) -> Iterator[Export]:
    """Open a snapshot of `job_id` and its tasks for export.

    `status`: a task status, a list of them, or "all"/None (a string is one status).
    `raw`: results and payloads as their stored JSON text instead of parsed.
    Raises JobNotFound, LedgerPruned (the job's, or with `latest` a retry's,
    ledger was deleted by retention) or InvalidInput.
    """
    statuses = one_or_more(status)
    conn = connect_direct(autocommit=False)
    try:
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        row = conn.execute(Q.get_job, {"job_id": job_id}).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        job = JobView.from_row(row)
        _check_ledger(job_id, job.ledger_state, job.ledger_pruned_at)
        descendants: list[int] = []
        if latest:
            for member in conn.execute(Q.chain_jobs, {"job_id": job_id}).fetchall():
                _check_ledger(member["id"], member["ledger_state"], member["ledger_pruned_at"])
                if member["id"] != job_id:
                    descendants.append(member["id"])
        yield Export(conn, job, statuses, latest, with_payload, raw, descendants)
    finally:
        conn.rollback()
        conn.close()


def results(
    job_id: int,
    status: str | Iterable[str] | None = "done",
    *,
    latest: bool = False,
    with_payload: bool = False,
    raw: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield `job_id`'s tasks of `status` (default "done"; a list for several, "all" for
    every one) in task order, as dicts:
    ``task, status, result, error, deliveries, finished_at, error_type,
    error_trace`` (``payload`` when asked; ``origin_task`` for a retry; ``job``
    with `latest`).

    Memory stays flat whatever the job's size (a server-side cursor). The
    snapshot is released when the generator is exhausted or closed.
    """
    with open_export(job_id, status, latest=latest, with_payload=with_payload, raw=raw) as export:
        yield from export

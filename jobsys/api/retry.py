"""Retrying a final job's failed (or lost, cancelled) tasks as a new child job.

The parent is never changed: a final status is never left, and its ledger
keeps what happened. The child is a new job (same pipeline, failure
threshold, max deliveries and completion hook) whose tasks are the chosen
tasks' payloads, in the parent's task order; it points at its parent
(`parent_id`) and at the first job of the chain (`root_id`), and each of its
tasks keeps its original task number (`origin_task`, in the first job).
`jobsys results ROOT --latest` uses that to give each original task's latest
outcome across the chain.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jobsys.api.enqueue import enqueue_bootstrap
from jobsys.api.read import get_job
from jobsys.api.statuses import status_list
from jobsys.errors import InvalidInput, JobNotFinal, JobNotFound, LedgerPruned
from jobsys.hooks.target import check_target
from jobsys.lifecycle.states import FINAL
from jobsys.models import JobView
from jobsys.pg.db import connection
from jobsys.pg.events import actor, record_event
from jobsys.pg.queries import Q
from jobsys.pipelines.resolve import resolve
from jobsys.storable import storable_text

log = logging.getLogger(__name__)

RETRYABLE = ("failed", "lost", "cancelled")
DEFAULT_RETRY = ("failed", "lost")
MAX_PATTERN_CHARS = 1_000


@dataclass(frozen=True)
class Retried:
    """What `retry` made: the child job and how many tasks of each status it re-runs."""

    job: JobView
    parent_id: int
    retried: dict[str, int]


def error_pattern(text: str | None) -> str | None:
    """`--error-like TEXT` as an ILIKE pattern: TEXT anywhere in the error unless
    it has its own ``%`` wildcards."""
    if text is None:
        return None
    if not text or len(text) > MAX_PATTERN_CHARS or "\x00" in text:
        raise InvalidInput(f"error-like: must be 1 to {MAX_PATTERN_CHARS:,} characters, no NUL")
    try:
        storable_text(text)
    except ValueError as exc:
        raise InvalidInput(f"error-like: {exc}") from None
    return text if "%" in text else f"%{text}%"


def retry(
    job_id: int,
    statuses: Iterable[str] = DEFAULT_RETRY,
    error_like: str | None = None,
    *,
    by: Mapping[str, str] | None = None,
) -> Retried:
    """Create a child job of `job_id`'s tasks of `statuses` (and whose error is like
    `error_like`), then enqueue its bootstrap. `by` (who asked) goes into both
    jobs' events.

    Raises JobNotFound, JobNotFinal (the parent is still running: its
    failures are not settled), LedgerPruned, or InvalidInput (nothing to retry,
    or the parent's pipeline or hook is no longer allowed: jobsys.pipelines.allow).
    """
    wanted = status_list(statuses, RETRYABLE)
    pattern = error_pattern(error_like)
    with connection() as conn, conn.transaction():
        parent = conn.execute(Q.lock_retry_parent, {"job_id": job_id}).fetchone()
        if parent is None:
            raise JobNotFound(job_id)
        if parent["status"] not in FINAL:
            raise JobNotFinal(job_id, parent["status"], "retried")
        if parent["ledger_state"] != "kept":
            raise LedgerPruned(job_id, parent["ledger_pruned_at"])
        # The child runs the parent's code: allowed now, as for a submit
        # (jobsys.pipelines.allow), or no child is made.
        resolve(parent["pipeline"])
        if parent["hook_target"] is not None:
            check_target(parent["hook_target"])
        child = conn.execute(Q.insert_retry_job, {"parent_id": job_id}).fetchone()
        assert child is not None
        child_id: int = child["id"]
        rows = conn.execute(
            Q.copy_retry_tasks,
            {"parent_id": job_id, "child_id": child_id, "statuses": list(wanted),
             "pattern": pattern},
        ).fetchall()  # fmt: skip
        retried = {r["status"]: r["n"] for r in rows}
        total = sum(retried.values())
        if total == 0:
            # Raising rolls the child back: no empty job is left behind.
            raise InvalidInput(_nothing_to_retry(job_id, wanted, error_like, parent))
        conn.execute(Q.set_job_total, {"job_id": child_id, "total": total})
        record_event(
            conn, child_id, "job_submitted", retry_of=job_id, root=child["root_id"],
            total=total, retried=retried, error_like=error_like, **actor(by),
        )  # fmt: skip
        record_event(conn, job_id, "retried", child=child_id, retried=retried,
                     error_like=error_like, **actor(by))  # fmt: skip
    log.info("retry submitted", extra={"job_id": child_id, "parent_id": job_id, "total": total})
    enqueue_bootstrap(child_id)
    return Retried(get_job(child_id), job_id, retried)


def _nothing_to_retry(
    job_id: int, wanted: tuple[str, ...], error_like: str | None, parent: dict[str, Any]
) -> str:
    """Why a retry found nothing, naming the statuses that do have tasks to retry."""
    what = "/".join(wanted) + (f" task whose error is like {error_like!r}" if error_like
                               else " task")  # fmt: skip
    others = {s: parent[f"{s}_count"] for s in RETRYABLE if s not in wanted}
    has = [f"{n:,} {s}" for s, n in others.items() if n]
    if not has:
        return (
            f"job {job_id} has no {what} to retry (none of its tasks ended {'/'.join(RETRYABLE)})"
        )
    flag = ",".join(s for s, n in others.items() if n)
    return (f"job {job_id} has no {what} to retry; it has {', '.join(has)}: "
            f"retry those with --status {flag} "
            f"(statuses={flag.split(',')!r} from Python)")  # fmt: skip


def retries_of(job_id: int) -> list[int]:
    """The ids of the jobs retried directly from `job_id`, oldest first."""
    with connection() as conn:
        rows = conn.execute(Q.job_retries, {"job_id": job_id}).fetchall()
    return [r["id"] for r in rows]

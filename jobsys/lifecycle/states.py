"""The job state machine and the one function that changes a job's status.

    queued ──bootstrap──> started ──all tasks accounted──> success | failure
      │                      │
      └──────cancel──────────┴──> canceling ──teardown──> revoked

Every status write in jobsys goes through `transition`: one guarded
``UPDATE ... WHERE id = $1 AND status = ANY($2) RETURNING``. Its result says
whether this caller won; only the winner does the follow-up work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from jobsys.pg.db import Conn
from jobsys.pg.finals import FINAL_CHANNEL
from jobsys.pg.queries import Q

log = logging.getLogger(__name__)


class Status(StrEnum):
    """A job's status."""

    QUEUED = "queued"
    STARTED = "started"
    CANCELING = "canceling"
    SUCCESS = "success"
    FAILURE = "failure"
    REVOKED = "revoked"


ACTIVE = frozenset({Status.QUEUED, Status.STARTED, Status.CANCELING})
FINAL = frozenset({Status.SUCCESS, Status.FAILURE, Status.REVOKED})
FINALIZABLE = frozenset({Status.QUEUED, Status.STARTED})
CANCELABLE = frozenset({Status.QUEUED, Status.STARTED})

# `to` may be a status, or BY_THRESHOLD: success or failure by the failure
# threshold, allowed only once every task is accounted for. Only
# jobsys.lifecycle.finalize moves a job there.
BY_THRESHOLD: Literal["by_threshold"] = "by_threshold"
Target = Status | Literal["by_threshold"]


@dataclass(frozen=True)
class Moved:
    """The row a winning transition returned."""

    job_id: int
    status: Status
    total: int
    done: int
    failed: int
    lost: int
    cancelled: int
    # The job has a completion hook (its delivery was just written to the outbox).
    has_hook: bool = False

    @property
    def pending(self) -> int:
        """Tasks not settled yet."""
        return self.total - self.done - self.failed - self.lost - self.cancelled


def transition(
    conn: Conn,
    job_id: int,
    to: Target,
    from_: frozenset[Status] | set[Status],
    reason: str,
) -> Moved | None:
    """Move `job_id` to `to` if its status is in `from_`; None when it was not.

    Runs inside the caller's transaction, so a caller may combine it with
    other writes that must commit (or not) together with the status change.
    """
    if to != BY_THRESHOLD and Status(to) in from_:
        raise ValueError(f"transition to {to} from a set containing it is not a change")
    # A move to a final status also announces it to waiters (jobsys.pg.finals),
    # in the same statement.
    row = conn.execute(
        Q.transition_status,
        {"job_id": job_id, "to": str(to), "from": sorted(str(s) for s in from_),
         "reason": reason, "channel": FINAL_CHANNEL},
    ).fetchone()  # fmt: skip
    if row is None:
        return None
    # The structured-log twin of the `status` row the statement wrote to job_events.
    log.info(
        "status",
        extra={"job_id": job_id, "to": row["status"], "from": sorted(from_), "reason": reason},
    )
    return Moved(
        job_id=row["id"],
        status=Status(row["status"]),
        total=row["total_count"],
        done=row["done_count"],
        failed=row["failed_count"],
        lost=row["lost_count"],
        cancelled=row["cancelled_count"],
        has_hook=bool(row["has_hook"]),
    )

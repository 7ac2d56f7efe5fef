"""A job's share of execution slots: its priority and weight, checked and changed.

When processors' slots are short, tasks of a higher `priority` start first;
among jobs of one priority, slots go in proportion to `weight` while each
has work (docs/processor.md, "How slots are shared"). Both are set at submit
and may be changed on an active job (`set_share`, `jobsys set`): Postgres
first (these two columns only, with an event naming who changed what), then
the job stream's description, which is where processors (that never read
Postgres) learn them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

from jobsys.errors import InvalidInput, JobNotFound
from jobsys.nats.admin import SHARE_BOUND, set_stream_share
from jobsys.nats.bridge import bridge
from jobsys.nats.subjects import JobNames
from jobsys.pg.db import connection
from jobsys.pg.events import actor, record_event
from jobsys.pg.queries import Q
from jobsys.pg.waits import bounded_row_wait, limit_lock_wait
from jobsys.settings import get_settings

log = logging.getLogger(__name__)

# Bounds (the same as Postgres's checks and what processors accept).
MIN_PRIORITY, MAX_PRIORITY = -SHARE_BOUND, SHARE_BOUND
MIN_WEIGHT, MAX_WEIGHT = 1, SHARE_BOUND
DEFAULT_PRIORITY = 0
DEFAULT_WEIGHT = 1


def _integer(name: str, value: object, low: int, high: int) -> int:
    """`value` as an integer in [low, high], or InvalidInput saying why in one line.
    A float is taken only if it is a finite whole number (JSON has no integers)."""
    if isinstance(value, bool):
        raise InvalidInput(f"{name}: must be an integer, not {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{name}: must be a finite integer, not {value!r}")
        if not value.is_integer():
            raise InvalidInput(f"{name}: must be an integer, not {value!r}")
        value = int(value)
    if not isinstance(value, int):
        raise InvalidInput(f"{name}: must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidInput(f"{name}: must be between {low} and {high}, not {value}")
    return value


def check_priority(value: object) -> int:
    """A valid priority (an integer in MIN_PRIORITY..MAX_PRIORITY)."""
    return _integer("priority", value, MIN_PRIORITY, MAX_PRIORITY)


def check_weight(value: object) -> int:
    """A valid weight (an integer in MIN_WEIGHT..MAX_WEIGHT)."""
    return _integer("weight", value, MIN_WEIGHT, MAX_WEIGHT)


@dataclass(frozen=True)
class ShareResult:
    """What `set_share` did: the job's share now, and before."""

    job_id: int
    status: str
    priority: int
    weight: int
    was_priority: int
    was_weight: int
    # Whether the stream's description (what processors read) was updated now;
    # False when the job has no stream (queued: bootstrap writes it from the row).
    stream_updated: bool


def set_share(
    job_id: int,
    *,
    priority: int | None = None,
    weight: int | None = None,
    by: Mapping[str, str] | None = None,
) -> ShareResult:
    """Change an active job's priority and/or weight.

    A final job is refused (InvalidInput, one line); an unknown one raises
    JobNotFound. Only these two columns are written, guarded on the job being
    active, with a `job_share_set` event (who, from what, to what) in the
    same transaction. Then the stream's description is updated: processors
    hear of it through the stream's UPDATED notice (or, if they missed it,
    their next listing). If NATS cannot be reached, the row is still changed
    and the error raised; a later `set` or the job's next re-bootstrap (which
    writes the description from the row) brings the stream in line.
    """
    if priority is None and weight is None:
        raise InvalidInput("set: give --priority and/or --weight")
    new_priority = None if priority is None else check_priority(priority)
    new_weight = None if weight is None else check_weight(weight)
    with bounded_row_wait(job_id) as wait, connection() as conn, conn.transaction():
        limit_lock_wait(conn, wait)
        row = conn.execute(
            Q.set_job_share, {"job_id": job_id, "priority": new_priority, "weight": new_weight}
        ).fetchone()
        if row is None:
            status = conn.execute(Q.job_statuses, {"job_ids": [job_id]}).fetchone()
            if status is None:
                raise JobNotFound(job_id)
            raise InvalidInput(f"job {job_id} is {status['status']}: its share cannot change")
        record_event(
            conn, job_id, "job_share_set",
            priority=row["priority"], weight=row["weight"],
            was_priority=row["was_priority"], was_weight=row["was_weight"], **actor(by),
        )  # fmt: skip
    names = JobNames.of(get_settings().namespace, job_id)
    updated = bridge().run(
        lambda nc, js: set_stream_share(nc, js, names, row["priority"], row["weight"])
    )
    return ShareResult(
        job_id=job_id,
        status=row["status"],
        priority=row["priority"],
        weight=row["weight"],
        was_priority=row["was_priority"],
        was_weight=row["was_weight"],
        stream_updated=bool(updated),
    )

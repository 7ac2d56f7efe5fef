"""Handlers of `queued_stale` and `bootstrap_stalled`: the bootstrap message sent again.

A queued job idle for `queued_stale_s` lost its bootstrap message (Redis
flushed, say); a started job whose `published_count` is still below its
total stopped publishing (its bootstrap was killed). Either way the
bootstrap is enqueued again, once per idle period, unless one is running;
it resumes (`jobsys.bootstrap.fill`).
"""

from __future__ import annotations

import logging

from jobsys.dramatiq.messages import send_bootstrap
from jobsys.lifecycle.states import Status
from jobsys.pg.db import connection
from jobsys.pg.locks import Lock, is_locked
from jobsys.pg.queries import Q
from jobsys.reconciler.findings import Handled
from jobsys.reconciler.kinds import Action
from jobsys.reconciler.state import Seen

log = logging.getLogger(__name__)


def _reenqueue(seen: Seen, from_: Status) -> Handled:
    job_id = seen.job_id
    if is_locked(Lock.BOOTSTRAP, job_id):
        return Handled(Action.NONE, {"reason": "a bootstrap is running"})
    try:
        send_bootstrap(job_id)
    except Exception as exc:
        log.warning("bootstrap not enqueued", extra={"job_id": job_id, "error": repr(exc)})
        return Handled(
            Action.NONE, {"reason": "bootstrap could not be enqueued (Redis unreachable?)"}
        )
    with connection() as conn:
        # So the next pass waits a full idle period before enqueuing again.
        conn.execute(Q.touch_progress, {"job_id": job_id, "from": [str(from_)]})
    return Handled(Action.ENQUEUED_BOOTSTRAP)


def queued_stale(seen: Seen) -> Handled:
    """Queued and idle: its bootstrap message was lost; send it again."""
    return _reenqueue(seen, Status.QUEUED)


def bootstrap_stalled(seen: Seen) -> Handled:
    """Started, not every task published, idle: the bootstrap died; send it again."""
    return _reenqueue(seen, Status.STARTED)

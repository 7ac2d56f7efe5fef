"""Which handler acts on which finding: one function per kind, each returning a `Handled`.

Every kind `diagnose` can return has exactly one entry (tests check it);
`stray_stream` and `error` are not per-job diagnoses (the stray-stream duty
and the pass itself record them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from jobsys.reconciler.cancel import cancel_overdue
from jobsys.reconciler.counters import counters_drift
from jobsys.reconciler.findings import Handled
from jobsys.reconciler.kinds import Kind
from jobsys.reconciler.lost import idle_lost, tasks_exhausted, waiting
from jobsys.reconciler.rebootstrap import bootstrap_stalled, queued_stale
from jobsys.reconciler.restream import (
    consumer_missing,
    consumer_stale,
    stream_missing,
    stream_replaced,
)
from jobsys.reconciler.state import Seen

Handler = Callable[[Seen], Handled]

HANDLERS: Mapping[Kind, Handler] = {
    Kind.COUNTERS_DRIFT: counters_drift,
    Kind.CANCEL_OVERDUE: cancel_overdue,
    Kind.QUEUED_STALE: queued_stale,
    Kind.STREAM_MISSING: stream_missing,
    Kind.STREAM_REPLACED: stream_replaced,
    Kind.CONSUMER_MISSING: consumer_missing,
    Kind.CONSUMER_STALE: consumer_stale,
    Kind.BOOTSTRAP_STALLED: bootstrap_stalled,
    Kind.TASKS_EXHAUSTED: tasks_exhausted,
    Kind.IDLE_LOST: idle_lost,
    Kind.WAITING: waiting,
}

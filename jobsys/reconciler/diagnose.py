"""Diagnosis: what is wrong with one active job, from what a pass saw. Pure.

No database, no NATS, no clock: the same `JobState`, `NatsView` and
`Thresholds` always give the same findings (tests/test_diagnose.py is a
table of them). The order of the result is the order findings are acted on.
"""

from __future__ import annotations

from jobsys.lifecycle.states import Status
from jobsys.reconciler.kinds import Kind
from jobsys.reconciler.state import JobState, NatsView, Thresholds


def diagnose(job: JobState, nats: NatsView | None, limits: Thresholds) -> list[Kind]:
    """The findings about one active job, in the order they are acted on.

    `nats` is NATS's view of a started job (None for other statuses, or when
    it was not looked at).
    """
    kinds: list[Kind] = []
    if job.counters != job.ledger:
        kinds.append(Kind.COUNTERS_DRIFT)
    if job.status == Status.CANCELING:
        if (job.canceling_s or 0.0) >= limits.cancel_grace_s:
            kinds.append(Kind.CANCEL_OVERDUE)
    elif job.status == Status.QUEUED:
        if job.idle_s >= limits.queued_stale_s:
            kinds.append(Kind.QUEUED_STALE)
    elif job.status == Status.STARTED and nats is not None:
        kinds += _started(job, nats, limits)
    return kinds


def _stream_replaced(job: JobState, nats: NatsView) -> bool:
    """The stream present is not the one the job's tasks were published to."""
    return (
        nats.stream
        and job.stream_created is not None
        and nats.created is not None
        and nats.created != job.stream_created
    )


def _started(job: JobState, nats: NatsView, limits: Thresholds) -> list[Kind]:
    kinds: list[Kind] = []
    # A stream to make whole first: its repair (the one fill bootstrap uses)
    # also finishes a stalled bootstrap's publishing.
    if not nats.stream:
        kinds.append(Kind.STREAM_MISSING)
    elif _stream_replaced(job, nats):
        kinds.append(Kind.STREAM_REPLACED)
    elif not nats.consumer:
        kinds.append(Kind.CONSUMER_MISSING)
    if kinds:
        return kinds
    if job.published < job.total and job.idle_s >= limits.queued_stale_s:
        kinds.append(Kind.BOOTSTRAP_STALLED)
    if nats.maybe_exhausted:
        kinds.append(Kind.TASKS_EXHAUSTED)
    published_all = job.published >= job.total
    if published_all and job.pending > 0 and job.idle_s >= limits.lost_after_s:
        if nats.consumer_stale:
            kinds.append(Kind.CONSUMER_STALE)
        elif nats.nothing_to_deliver and nats.advisories:
            # Exhausted tasks whose advisories are not all counted yet: the
            # idle rule would mark them lost without how often NATS delivered
            # them. TASKS_EXHAUSTED (above) counts them, a pass at a time.
            pass
        else:
            kinds.append(Kind.IDLE_LOST if nats.nothing_to_deliver else Kind.WAITING)
    return kinds

"""What the reconciler can find about a job, and what it can do about it."""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """A finding: one way a job can be stuck (or look stuck)."""

    COUNTERS_DRIFT = "counters_drift"  # counter columns differ from the ledger's counts
    CANCEL_OVERDUE = "cancel_overdue"  # canceling past the grace period
    QUEUED_STALE = "queued_stale"  # queued and idle: its bootstrap message was lost
    STREAM_MISSING = "stream_missing"  # started, no stream
    STREAM_REPLACED = "stream_replaced"  # started, a stream its tasks were not published to
    CONSUMER_MISSING = "consumer_missing"  # started, a stream without its consumer
    # idle, and its consumer awaits acks for more messages than the stream holds
    CONSUMER_STALE = "consumer_stale"
    BOOTSTRAP_STALLED = "bootstrap_stalled"  # published_count < total and idle
    TASKS_EXHAUSTED = "tasks_exhausted"  # MAX_DELIVERIES advisories in the stream
    IDLE_LOST = "idle_lost"  # idle, NATS has nothing to deliver, the ledger has pending
    WAITING = "waiting"  # idle, but NATS still offers or holds messages
    STRAY_STREAM = "stray_stream"  # a stream of a final or unknown job
    ERROR = "error"  # looking at the job failed (NATS timing out, say)


class Action(StrEnum):
    """What the reconciler did about a finding."""

    NONE = "none"  # nothing (the detail says why)
    REPAIRED = "repaired"  # counters set from the ledger
    MARKED_LOST = "marked_lost"  # pending tasks moved to lost and counted
    RECREATED = "recreated"  # stream made whole: re-created, pending tasks republished
    RECREATED_CONSUMER = "recreated_consumer"  # consumer re-created
    ENQUEUED_BOOTSTRAP = "enqueued_bootstrap"  # bootstrap message sent again
    REVOKED = "revoked"  # canceling -> revoked, stream deleted
    DELETED = "deleted"  # stray stream deleted
    ERROR = "error"  # the action raised (the detail holds the error)


# Findings whose handler acts on nothing (it only says why): judged from the
# pass's own look, without the job's lock or a second look.
NO_ACTION = frozenset({Kind.WAITING})

# Findings that need only the database: a job that has only these is not
# looked at in NATS again under its lock.
DB_ONLY = frozenset(
    {Kind.COUNTERS_DRIFT, Kind.CANCEL_OVERDUE, Kind.QUEUED_STALE, Kind.BOOTSTRAP_STALLED}
)

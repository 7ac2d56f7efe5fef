"""Binding a result to the delivery it answers: its reply must point at the very stream
message of its task.

A reply subject names a stream and a sequence (jobsys.nats.subjects). An item
whose reply is not an ack subject of this job's stream and consumer, or whose
task is out of range, is rejected at once (`screen`). The counting statement
counts the items naming the task's recorded place in the stream; the others
(a result that beat its chunk's record, a republished message, a forgery)
are checked against the stream itself (`bind_unbound`): the message at that
sequence must carry the task's Nats-Msg-Id. The stream is read through a
`Lookup` the caller passes in, so recording needs no NATS client. An item
that fails the check is rejected with an event, neither counted nor acked
(its sequence may be another task's live message). See docs/security.md.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from jobsys.models import MAX_REASON_CHARS, ResultBatch, TaskResult
from jobsys.nats.subjects import JobNames, parse_ack_subject
from jobsys.pg.db import Conn
from jobsys.pg.events import record_event
from jobsys.recording.counting import Item, Recorded, record_or_split, rows_of
from jobsys.settings import get_settings
from jobsys.storable import storable_error

log = logging.getLogger(__name__)

# Which task each message of a job's stream is: (job_id, sequences) ->
# {sequence: (job_id, task_no), or None when no task message sits there}.
Lookup = Callable[[int, Sequence[int]], Mapping[int, tuple[int, int] | None]]
# Events name at most this many tasks (the count says how many in all).
MAX_TASKS_IN_EVENT = 50


# Reasons a result is not bound to its task (results_rejected events).
ANOTHER_TASKS_MESSAGE = "reply points at another task's message"

NO_TASK_MESSAGE = "reply points at no message of a task in the job's stream"


def reply_sequence(r: TaskResult, names: JobNames, total: int) -> str | int:
    """Why an item is rejected, or the stream sequence its reply names."""
    ack = parse_ack_subject(r.reply)
    if ack is None:
        return "reply is not a JetStream ack subject"
    if ack.stream != names.stream or ack.consumer != names.consumer:
        return f"reply belongs to stream {ack.stream!r}, not this job's"
    if r.task >= total:
        return f"task {r.task} is out of range (job has {total} tasks)"
    return ack.stream_seq


def screen(batch: ResultBatch, total: int) -> tuple[list[Item], list[str], dict[str, int]]:
    """(items to record with their stream sequences, replies of rejected items,
    {reason: count}) of a batch."""
    names = JobNames.of(get_settings().namespace, batch.job_id)
    valid: list[Item] = []
    rejected = [bad.reply for bad in batch.rejected]
    reasons: Counter[str] = Counter(bad.reason for bad in batch.rejected)
    for r in batch.results:
        reason = reply_sequence(r, names, total)
        if isinstance(reason, int):
            valid.append((r, reason))
        else:
            rejected.append(r.reply)
            # The reason quotes the sender's reply: keep it storable in an event.
            reasons[storable_error(reason)[:MAX_REASON_CHARS]] += 1
    return valid, rejected, dict(reasons)


def sort_by_lookup(
    job_id: int,
    items: Sequence[Item],
    unbound: set[tuple[int, int]],
    found: Mapping[int, tuple[int, int] | None],
) -> tuple[list[Item], list[tuple[TaskResult, str]]]:
    """Of the items of the tasks the counting statement left (`unbound`), which are
    bound to their task's message (`found`: what the stream holds at each
    sequence) and which are not, with the reason. All items of a task are
    counted together: one item not bound leaves the task's others to count."""
    held = {task for task, _ in unbound}
    bound: list[Item] = []
    misbound: list[tuple[TaskResult, str]] = []
    for r, seq in items:
        if r.task not in held:
            continue
        if seq is not None and (r.task, seq) in unbound:
            owner = found.get(seq)
            if owner != (job_id, r.task):
                misbound.append((r, NO_TASK_MESSAGE if owner is None else ANOTHER_TASKS_MESSAGE))
                continue
        bound.append((r, None))
    return bound, misbound


def bind_unbound(
    conn: Conn,
    job_id: int,
    items: Sequence[Item],
    unbound: set[tuple[int, int]],
    max_bytes: int,
    lookup: Lookup,
) -> tuple[Recorded, list[tuple[TaskResult, str]]]:
    """Count the tasks the counting statement left (see jobsys.recording.counting):
    each of their items whose message, looked up in the stream, is the task's
    own counts (the task once, as in `rows_of`); the others are returned with
    the reason."""
    seqs = sorted({seq for _, seq in unbound})
    # The slow path (a result that beat its chunk's record, a republished
    # message, a forgery): seen in the log, to tell how often it is taken.
    log.info("results checked against the stream", extra={"job_id": job_id, "count": len(seqs)})
    bound, misbound = sort_by_lookup(job_id, items, unbound, lookup(job_id, seqs))
    if not bound:
        return Recorded(), misbound
    rows, checked = rows_of(bound, max_bytes)
    return record_or_split(conn, job_id, rows, checked), misbound


def reject_misbound(conn: Conn, job_id: int, misbound: Sequence[tuple[TaskResult, str]]) -> None:
    """The event of results whose reply points at no message of their task."""
    reasons = Counter(reason for _, reason in misbound)
    tasks = sorted({r.task for r, _ in misbound})
    record_event(
        conn, job_id, "results_rejected", "warning",
        reasons=dict(reasons), count=len(misbound), tasks=tasks[:MAX_TASKS_IN_EVENT],
    )  # fmt: skip

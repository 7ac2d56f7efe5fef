"""Dramatiq actors: bootstrap, result processing, teardown, reconcile, hooks.

Only worker processes load this module (it is a leaf of the import graph):
everything else sends to these actors through `jobsys.dramatiq.messages`, by the names
declared there. Dramatiq acks a message only after its actor returns and
retries raised exceptions, so every actor here is idempotent: running one
twice, or after a crash half-way, changes nothing the first run did not.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import dramatiq
from pydantic import ValidationError

from jobsys import metrics
from jobsys.api.read import get_job
from jobsys.bootstrap.start import run_bootstrap
from jobsys.dramatiq import messages
from jobsys.dramatiq.broker import setup_broker
from jobsys.hooks.deliver import deliver
from jobsys.lifecycle.finalize import send_teardown_or_leave, teardowns_deferred
from jobsys.lifecycle.revoke import BEFORE_FIRST_TASK, revoke
from jobsys.lifecycle.states import Status
from jobsys.lifecycle.teardown import run_teardown
from jobsys.models import PG_BIGINT_MAX, PG_INT_MAX, RETRY_NOTES, ResultBatch, describe_error
from jobsys.nats.acks import ack_current_replies
from jobsys.nats.admin import delete_job_stream
from jobsys.nats.bridge import bridge, lookup_tasks
from jobsys.nats.subjects import JobNames, again_subject
from jobsys.pg.db import connection
from jobsys.pg.events import record_event
from jobsys.pg.queries import Q
from jobsys.reconciler import reconcile_pass
from jobsys.recording.apply import apply_results
from jobsys.recording.counting import lock_listed_tasks
from jobsys.settings import get_settings

setup_broker()

log = logging.getLogger(__name__)

# How long the worker tries to tell a processor to resend a batch it could not record.
AGAIN_TIMEOUT_S = 5.0


@dramatiq.actor(
    actor_name=messages.BOOTSTRAP_JOB, queue_name=messages.QUEUE_OF[messages.BOOTSTRAP_JOB],
    max_retries=50, min_backoff=500, max_backoff=30_000, time_limit=6 * 3_600_000,
)  # fmt: skip
def bootstrap_job(job_id: int) -> None:
    """queued -> started, create the stream, publish every task (resumable)."""
    run_bootstrap(job_id)


@dramatiq.actor(
    actor_name=messages.PROCESS_RESULTS, queue_name=messages.QUEUE_OF[messages.PROCESS_RESULTS],
    max_retries=30, min_backoff=100, max_backoff=10_000, time_limit=300_000,
)  # fmt: skip
def process_results(job_id: Any, results: Any, notify: Any = None) -> None:
    """Apply one result batch exactly once, ack its NATS messages, tell the sender.

    `notify` is the sending processor's inbox subject for this batch: it
    holds the batch's messages in progress until told (jobsys.processor).
    Every normal return tells it, rejected batches included (holding those
    would not make them valid); a raise does not, so the batch stays held,
    and the processor is asked to send it again (`<notify>.again`).
    """
    subject = notify if _is_inbox(notify) else None
    # Jobs this batch made final: their streams are deleted here, after the
    # acks (jobsys.lifecycle.finalize, teardowns_deferred), not by a teardown message.
    final: list[int] = []
    deleted: dict[int, bool] = {}
    try:
        with teardowns_deferred() as final:
            job, ack = _apply(job_id, results)
        if ack or subject is not None or final:
            deleted = bridge().run(
                lambda nc, js: _ack_and_confirm(nc, js, job, ack, subject, final)
            )
    except Exception:
        if subject is not None:
            _ask_again(subject)
        raise
    finally:
        _streams_deleted(final, deleted)


def _ask_again(subject: str) -> None:
    """Tell the sender its batch is not recorded yet: it sends it again within
    JOBSYS_RESULT_RESEND_S unless a retry records it first (jobsys.processor.outbox).

    Dramatiq retries this actor by enqueueing a copy; Redis may refuse that
    copy (at its memory limit), and then only the sender still has the batch.
    Best effort: if NATS cannot take this either, the sender's own resend
    timer still holds."""
    try:
        bridge().run(lambda nc, js: _publish(nc, again_subject(subject)), timeout=AGAIN_TIMEOUT_S)
    except Exception as exc:
        log.warning("could not ask a processor to resend a batch", extra={"error": repr(exc)})


async def _publish(nc: Any, subject: str) -> None:
    await nc.publish(subject, b"")
    await nc.flush(timeout=AGAIN_TIMEOUT_S)


def _is_inbox(value: Any) -> bool:
    # Only reply inboxes: a message must not make the worker publish anywhere.
    return (
        isinstance(value, str)
        and value.startswith("_INBOX.")
        and len(value) <= 200
        and not any(c in value for c in " \t\r\n*>")
    )


async def _ack_and_confirm(
    nc: Any, js: Any, job_id: int, ack: list[str], subject: str | None, final: list[int]
) -> dict[int, bool]:
    """Ack the recorded replies, tell the sender, then delete the streams of the
    jobs made final; returns, for each, whether its stream was there to delete.

    A batch that made its own job final deletes that stream first and acks
    nothing: its messages go with the stream, and a small job, whose every
    result comes in one or two batches, saves a stream lookup and an ack per
    task. If the deletion raises, nothing was acked and the actor is retried
    (as when an ack raises)."""
    namespace = get_settings().namespace
    deleted: dict[int, bool] = {}
    if job_id in final:
        deleted[job_id] = await delete_job_stream(nc, js, JobNames.of(namespace, job_id))
    elif ack:
        await ack_current_replies(nc, js, JobNames.of(namespace, job_id).stream, ack)
    if subject is not None:
        await nc.publish(subject, b"")
        await nc.flush(timeout=10)
    for j in final:
        if j not in deleted:
            deleted[j] = await delete_job_stream(nc, js, JobNames.of(namespace, j))
    return deleted


def _streams_deleted(final: list[int], deleted: dict[int, bool]) -> None:
    """Record the streams deleted for jobs made final (one already gone needs
    nothing more); send a teardown for the rest (their deletion failed or never
    ran: NATS is down, or the actor raised)."""
    namespace = get_settings().namespace
    for job_id in final:
        if job_id not in deleted:
            send_teardown_or_leave(job_id)
            continue
        if not deleted[job_id]:
            continue
        try:
            with connection() as conn:
                stream = JobNames.of(namespace, job_id).stream
                record_event(conn, job_id, "stream_deleted", stream=stream, reason="finished")
        except Exception as exc:
            # Only the event is missing: the stream is gone, as it should be.
            log.warning("stream_deleted not recorded", extra={"job_id": job_id, "error": repr(exc)})


def _apply(job_id: Any, results: Any) -> tuple[int, list[str]]:
    """Record the batch; returns (job id, reply subjects to ack)."""
    try:
        # Item by item: a malformed item is set aside with its reason (see
        # ResultBatch); only a message that is not a batch at all raises.
        batch = ResultBatch.model_validate({"job_id": job_id, "results": results})
    except ValidationError as exc:
        # Dropped with a recorded reason (not retried: it would fail the same
        # way). Its NATS messages stay unacked and are delivered again, so a
        # correct result can still arrive.
        with connection() as conn:
            record_event(
                conn, _event_job_id(job_id), "results_rejected", "warning",
                reason=describe_error(exc, whole="batch"),
            )  # fmt: skip
        return -1, []
    started = time.perf_counter()
    applied = apply_results(batch, lookup_tasks)
    metrics.record_batch(
        time.perf_counter() - started,
        applied.moved_done,
        applied.moved_failed,
        str(applied.finalized) if applied.finalized is not None else None,
    )
    return batch.job_id, applied.ack


def _event_job_id(value: Any) -> int | None:
    # Only a value the job_id column can hold (not a bool, not out of range).
    return value if type(value) is int and 1 <= value <= PG_BIGINT_MAX else None


@dramatiq.actor(
    actor_name=messages.NOTE_RETRIES, queue_name=messages.QUEUE_OF[messages.NOTE_RETRIES],
    max_retries=3, min_backoff=500, max_backoff=5_000, time_limit=60_000,
)  # fmt: skip
def note_retries(job_id: Any, notes: Any) -> None:
    """Write on pending tasks when they are delivered again and why they failed
    (jobsys.processor.retries; display only, nothing is counted)."""
    job = _event_job_id(job_id)
    try:
        valid = RETRY_NOTES.validate_python(notes)
    except ValidationError as exc:
        log.warning("retry notes dropped", extra={"job_id": job, "reason": describe_error(exc)})
        return
    if job is None:
        return
    with connection() as conn, conn.transaction():
        tasks = [n[0] for n in valid]
        conn.execute(
            Q.note_retries,
            {
                "job_id": job,
                "rows": lock_listed_tasks(conn, job, tasks),
                "tasks": tasks,
                "deliveries": [n[1] for n in valid],
                "next_at": [n[2] for n in valid],
                "errors": [n[3] for n in valid],
            },
        )


@dramatiq.actor(
    actor_name=messages.TEARDOWN_JOB, queue_name=messages.QUEUE_OF[messages.TEARDOWN_JOB],
    max_retries=50, min_backoff=500, max_backoff=30_000,
)  # fmt: skip
def teardown_job(job_id: int, revoke_after: Any = None) -> None:
    """Delete a final or canceling job's stream; finish a cancel (revoked), past the
    chunks an earlier revoke did (`revoke_after`, from the cancel that sent this)."""
    run_teardown(job_id)
    if get_job(job_id).status == Status.CANCELING:
        revoke(job_id, "teardown", after=_task_no(revoke_after))


def _task_no(value: Any) -> int:
    # Only a task number the ledger could hold; anything else starts at the
    # first task (the whole job is swept at the end all the same).
    if type(value) is int and BEFORE_FIRST_TASK <= value <= PG_INT_MAX:
        return value
    return BEFORE_FIRST_TASK


@dramatiq.actor(
    actor_name=messages.DELIVER_HOOK, queue_name=messages.QUEUE_OF[messages.DELIVER_HOOK],
    max_retries=20, min_backoff=1_000, max_backoff=60_000, time_limit=300_000,
)  # fmt: skip
def deliver_hook(job_id: int) -> None:
    """One delivery attempt of a final job's completion hook, if due (jobsys.hooks)."""
    deliver(job_id)


@dramatiq.actor(
    actor_name=messages.RECONCILE, queue_name=messages.QUEUE_OF[messages.RECONCILE],
    max_retries=0, time_limit=30 * 60_000,
)  # fmt: skip
def reconcile() -> None:
    """One reconciler pass (enqueued by `jobsys scheduler`).

    Not retried: the scheduler sends the next pass anyway, and a pass that
    failed half-way left every job it did not reach as it was.
    """
    reconcile_pass(trigger="actor")

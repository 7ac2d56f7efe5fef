"""Dramatiq actors: bootstrap, result processing, teardown, reconcile.

Dramatiq acks a message only after its actor returns and retries raised
exceptions, so every actor here is idempotent: running one twice, or after a
crash half-way, changes nothing the first run did not.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from pydantic import ValidationError

from jobsys.broker import CONTROL_QUEUE, RESULTS_QUEUE, setup_broker
from jobsys.db import connection
from jobsys.events import record_event
from jobsys.ledger import apply_results
from jobsys.models import ResultBatch
from jobsys.queue import JobNames, ack_current_replies, bridge
from jobsys.settings import get_settings

setup_broker()

log = logging.getLogger(__name__)


@dramatiq.actor(
    queue_name=CONTROL_QUEUE, max_retries=50, min_backoff=500, max_backoff=30_000,
    time_limit=6 * 3_600_000,
)  # fmt: skip
def bootstrap_job(job_id: int) -> None:
    """queued -> started, create the stream, publish every task (resumable)."""
    from jobsys.bootstrap import run_bootstrap

    run_bootstrap(job_id)


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{exc.error_count()} error(s); first at {where or 'message'}: {first['msg']}"


@dramatiq.actor(
    queue_name=RESULTS_QUEUE, max_retries=30, min_backoff=100, max_backoff=10_000,
    time_limit=300_000,
)  # fmt: skip
def process_results(job_id: Any, results: Any, notify: Any = None) -> None:
    """Apply one result batch exactly once, ack its NATS messages, tell the sender.

    `notify` is the sending processor's inbox subject for this batch: it
    holds the batch's messages in progress until told (jobsys.processor).
    Every normal return tells it, rejected batches included (holding those
    would not make them valid); a raise does not, so the batch stays held.
    """
    subject = notify if _is_inbox(notify) else None
    job, ack = _apply(job_id, results)
    if ack or subject is not None:
        bridge().run(lambda nc, js: _ack_and_confirm(nc, js, job, ack, subject))


def _is_inbox(value: Any) -> bool:
    # Only reply inboxes: a message must not make the worker publish anywhere.
    return (
        isinstance(value, str)
        and value.startswith("_INBOX.")
        and len(value) <= 200
        and not any(c in value for c in " \t\r\n*>")
    )


async def _ack_and_confirm(
    nc: Any, js: Any, job_id: int, ack: list[str], subject: str | None
) -> None:
    if ack:
        stream = JobNames.of(get_settings().namespace, job_id).stream
        await ack_current_replies(nc, js, stream, ack)
    if subject is not None:
        await nc.publish(subject, b"")
        await nc.flush(timeout=10)


def _apply(job_id: Any, results: Any) -> tuple[int, list[str]]:
    """Record the batch; returns (job id, reply subjects to ack)."""
    try:
        batch = ResultBatch.model_validate({"job_id": job_id, "results": results})
    except ValidationError as exc:
        # A malformed batch is dropped with a recorded reason (not retried:
        # it would fail the same way). Its NATS messages stay unacked and are
        # delivered again, so a correct result can still arrive.
        with connection() as conn:
            record_event(
                conn, job_id if isinstance(job_id, int) else None, "results_rejected", "warning",
                reason=_describe(exc),
            )  # fmt: skip
        return -1, []
    applied = apply_results(batch)
    if applied.finalized is not None:
        # Before acking: if the ack below fails and this message is retried,
        # the job is already final and this branch would not run again.
        teardown_job.send(batch.job_id)
    return batch.job_id, applied.ack


@dramatiq.actor(queue_name=CONTROL_QUEUE, max_retries=50, min_backoff=500, max_backoff=30_000)
def teardown_job(job_id: int) -> None:
    """Delete a final or canceling job's stream; finish a cancel (revoked)."""
    from jobsys.teardown import run_teardown

    run_teardown(job_id)


@dramatiq.actor(queue_name=CONTROL_QUEUE, max_retries=0, time_limit=30 * 60_000)
def reconcile() -> None:
    """One reconciler pass (enqueued by `jobsys scheduler`).

    Not retried: the scheduler sends the next pass anyway, and a pass that
    failed half-way left every job it did not reach as it was.
    """
    from jobsys.reconciler import reconcile_pass

    reconcile_pass(trigger="actor")

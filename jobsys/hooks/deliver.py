"""Completion hooks: tell another system, once per job, that a job is final.

``jobsys submit --on-complete TARGET``; TARGET is a Dramatiq actor
(``module:actor``) or an ``http://`` / ``https://`` URL (jobsys.hooks.target).

The outbox. The guarded transition that makes a job final also inserts the
job's row into `job_hooks` (sql/queries/core.sql, `transition_status`), in
the same statement: a job is final if and only if its delivery is recorded,
whichever path finalized it (the last result batch, the reconciler, a
revoke), and the table's primary key means there is never a second row.

The sender (`deliver`, run by the `deliver_hook` actor) makes one attempt
per claim:

1. claim: one guarded UPDATE ``pending|expired sending -> sending`` with a
   lease, committed; of concurrent senders exactly one gets the row;
2. send: enqueue the message for the user's actor, or POST the job's final
   status and counters with ``Idempotency-Key: job-<id>``, the whole attempt
   within JOBSYS_HOOK_TIMEOUT_S (jobsys.hooks.post);
3. mark: ``sending -> delivered`` (or back to ``pending`` with a backoff, or
   ``failed`` after the last allowed attempt), guarded by the attempt number,
   with a job event in the same transaction.

Who starts it: the follow-up every final job gets (jobsys.lifecycle.finalize)
enqueues `deliver_hook`; a failed attempt enqueues the next one with a delay;
the reconciler (jobsys.hooks.resend) enqueues every delivery that is overdue (its
message was lost, e.g. a worker was killed after the final commit) or whose
sender's lease expired (the sender died between claim and mark).

What remains (docs/hooks.md): a sender that dies after the receiver got the
delivery and before its mark commits (one Redis command or one HTTP response,
then one commit) leaves the row claimed; after the lease it is sent again,
with the same idempotency key and, for actors, the same message id.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from jobsys.display import redact
from jobsys.dramatiq.messages import send_hook, send_to_actor
from jobsys.errors import InvalidInput
from jobsys.hooks.post import PostFailed, post
from jobsys.hooks.target import HookTarget, check_target
from jobsys.models import JobView
from jobsys.pg.db import connection
from jobsys.pg.events import record_event
from jobsys.pg.queries import Q
from jobsys.settings import Settings, get_settings, origin_of, parse_hook_headers
from jobsys.testing.pauses import Pause, pause

log = logging.getLogger(__name__)


# What of a failing receiver's answer is kept in last_error and the event.
MAX_ERROR_EXCERPT = 300
# A mark that cannot be written (Postgres briefly away) is retried this many
# times, doubling from MARK_RETRY_S, before the lease is left to expire.
MARK_TRIES = 5
MARK_RETRY_S = 0.5
# A message that arrives before its delivery is due is re-sent for later,
# this much after the due time (clocks of hosts differ slightly).
EARLY_MARGIN_S = 0.25


def idempotency_key(job_id: int) -> str:
    """What a receiver deduplicates on: the same for every attempt of a job's hook."""
    return f"job-{job_id}"


def message_id(settings: Settings, job_id: int) -> str:
    """The Dramatiq message id of a job's hook message: the same for every attempt."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"jobsys:{settings.namespace}:hook:{job_id}"))


def hook_payload(view: JobView) -> dict[str, Any]:
    """What the receiver gets: the job's final status and counters (JSON-ready)."""
    return {
        "idempotency_key": idempotency_key(view.job_id),
        "job_id": view.job_id,
        "name": view.name,
        "pipeline": view.pipeline,
        "status": view.status,
        "total": view.total,
        "done": view.done,
        "failed": view.failed,
        "lost": view.lost,
        "cancelled": view.cancelled,
        "parent_id": view.parent_id,
        "root_id": view.root_id,
        "created_at": view.created_at.isoformat(),
        "started_at": view.started_at.isoformat() if view.started_at else None,
        "finished_at": view.finished_at.isoformat() if view.finished_at else None,
    }


class SendFailed(Exception):
    """One attempt did not reach the receiver (or it did not accept)."""


def _send(target: HookTarget, job_id: int, payload: dict[str, Any], s: Settings) -> str:
    """One attempt; returns a short description of the answer, raises SendFailed."""
    if target.kind == "actor":
        assert target.queue_name is not None and target.actor_name is not None
        try:
            send_to_actor(target.queue_name, target.actor_name, message_id(s, job_id), payload)
        except Exception as exc:
            raise SendFailed(f"enqueue failed: {exc!r}") from exc
        return f"enqueued for {target.actor_name} on queue {target.queue_name}"
    headers = {**headers_for(target.target, s), "Idempotency-Key": idempotency_key(job_id)}
    try:
        answer = post(target.target, payload, headers, s.hook_timeout_s)
    except PostFailed as exc:
        raise SendFailed(str(exc)) from exc
    if not answer.accepted:
        excerpt = answer.excerpt[:MAX_ERROR_EXCERPT].decode("utf-8", "replace")
        raise SendFailed(f"HTTP {answer.status}: {excerpt}".replace("\r", " ").replace("\n", " "))
    return f"HTTP {answer.status}"


def headers_for(url: str, s: Settings) -> dict[str, str]:
    """The JOBSYS_HOOK_HEADERS of `url`'s origin (none for any other receiver)."""
    if s.hook_headers is None:
        return {}
    return parse_hook_headers(s.hook_headers.get_secret_value()).get(origin_of(url), {})


def _backoff_s(attempt: int, s: Settings) -> float:
    return float(min(s.hook_backoff_s * 2 ** (attempt - 1), s.hook_backoff_max_s))


def _mark(query: str, params: dict[str, Any], event: str, level: str, **detail: Any) -> bool:
    """Run one guarded mark with its event; True if this sender's claim still held."""
    delay = MARK_RETRY_S
    for tries_left in range(MARK_TRIES - 1, -1, -1):
        try:
            with connection() as conn, conn.transaction():
                row = conn.execute(query, params).fetchone()
                if row is None:
                    return False
                record_event(conn, params["job_id"], event, level, **detail)
                return True
        except Exception as exc:
            if tries_left == 0:
                raise
            log.warning("hook mark failed; retrying",
                        extra={"job_id": params["job_id"], "error": repr(exc)})  # fmt: skip
            time.sleep(delay)
            delay *= 2
    return False


def deliver(job_id: int, settings: Settings | None = None) -> str:
    """Make one delivery attempt of `job_id`'s hook if it is due; returns what happened.

    "not_due" (nothing claimable: delivered, given up, not final, no hook,
    claimed by a live sender, or due later: then it is re-enqueued for
    then), "delivered", "retry" (failed; the next attempt is enqueued),
    "gave_up", or "lost_claim" (our lease expired and another sender took it).
    """
    s = settings or get_settings()
    with connection() as conn, conn.transaction():
        claim = conn.execute(Q.claim_hook, {"job_id": job_id, "lease_s": s.hook_lease_s}).fetchone()
        if claim is not None and claim["prev_state"] == "sending":
            record_event(
                conn, job_id, "hook_reclaimed", "warning", attempt=claim["attempts"],
                reason="the previous sender did not finish within the lease; sending again",
            )  # fmt: skip
        view = None
        if claim is not None:
            row = conn.execute(Q.get_job, {"job_id": job_id}).fetchone()
            assert row is not None  # job_hooks.job_id references jobs
            view = JobView.from_row(row)
    if claim is None:
        _reschedule_if_early(job_id)
        return "not_due"
    assert view is not None
    attempt: int = claim["attempts"]
    pause(Pause.BEFORE_HOOK_SEND, job_id)
    try:
        target = check_target(claim["target"])
        answer = _send(target, job_id, hook_payload(view), s)
    except (SendFailed, InvalidInput) as exc:
        return _failed(job_id, attempt, str(exc), s)
    params = {"job_id": job_id, "attempt": attempt}
    if not _mark(Q.mark_hook_delivered, params, "hook_delivered", "info",
                 attempt=attempt, kind=target.kind, answer=answer):  # fmt: skip
        log.warning("hook delivered but our claim had expired", extra={"job_id": job_id})
        return "lost_claim"
    return "delivered"


def _failed(job_id: int, attempt: int, error: str, s: Settings) -> str:
    # Stored and shown (last_error, the event): never a credential of the URL.
    error = redact(error)
    give_up = attempt >= s.hook_max_attempts
    delay = 0.0 if give_up else _backoff_s(attempt, s)
    params = {"job_id": job_id, "attempt": attempt, "give_up": give_up, "delay_s": delay,
              "error": error}  # fmt: skip
    if give_up:
        marked = _mark(Q.mark_hook_failed, params, "hook_gave_up", "error",
                       attempt=attempt, error=error, max_attempts=s.hook_max_attempts)  # fmt: skip
        return "gave_up" if marked else "lost_claim"
    if not _mark(Q.mark_hook_failed, params, "hook_failed", "warning",
                 attempt=attempt, error=error, retry_in_s=delay):  # fmt: skip
        return "lost_claim"
    try:
        send_hook(job_id, delay_ms=int((delay + EARLY_MARGIN_S) * 1000))
    except Exception as exc:
        # The reconciler sends it once it is overdue by hook_resend_after_s.
        log.warning("next hook attempt not enqueued", extra={"job_id": job_id, "error": repr(exc)})
    return "retry"


def _reschedule_if_early(job_id: int) -> None:
    """A message that came before its delivery was due goes back until then."""
    with connection() as conn:
        row = conn.execute(Q.hook_wait, {"job_id": job_id}).fetchone()
    if row is None or row["state"] != "pending" or float(row["wait_s"]) <= 0:
        return
    try:
        send_hook(job_id, delay_ms=int((float(row["wait_s"]) + EARLY_MARGIN_S) * 1000))
    except Exception as exc:
        log.warning("hook not re-enqueued", extra={"job_id": job_id, "error": repr(exc)})

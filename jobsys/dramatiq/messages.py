"""The one place jobsys sends Dramatiq messages: bootstrap, results, teardown, reconcile, hooks.

Library code (submit, cancel, the reconciler, the processor, the scheduler)
sends through these functions, by actor name. `jobsys.worker.actors`, which only
worker processes load, declares the actors under the same names and queues.
So no library module imports the actors, and the import graph of `jobsys/`
stays one-way. Whatever every message must carry (a signature, say) is added
here, once: each is signed with `JOBSYS_SECRET` (jobsys.dramatiq.signing), and workers
drop what is not.
"""

from __future__ import annotations

from typing import Any

import dramatiq

from jobsys.dramatiq.broker import CONTROL_QUEUE, HOOKS_QUEUE, RESULTS_QUEUE, setup_broker
from jobsys.dramatiq.signing import SIGNATURE_OPTION, require_secret, signature

# Actor names: the contract between this module and jobsys.worker.actors.
BOOTSTRAP_JOB = "bootstrap_job"
PROCESS_RESULTS = "process_results"
TEARDOWN_JOB = "teardown_job"
RECONCILE = "reconcile"
DELIVER_HOOK = "deliver_hook"
NOTE_RETRIES = "note_retries"

# Which queue each actor consumes.
QUEUE_OF = {
    BOOTSTRAP_JOB: CONTROL_QUEUE,
    PROCESS_RESULTS: RESULTS_QUEUE,
    TEARDOWN_JOB: CONTROL_QUEUE,
    RECONCILE: CONTROL_QUEUE,
    DELIVER_HOOK: HOOKS_QUEUE,
    NOTE_RETRIES: RESULTS_QUEUE,
}


def _signed(
    queue_name: str, actor_name: str, args: tuple[Any, ...], message_id: str | None = None
) -> dramatiq.Message[Any]:
    """A message for `actor_name`, signed; raises SecretMissing without a secret."""
    sig = signature(require_secret(), actor_name, args, {})
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=queue_name,
        actor_name=actor_name,
        args=args,
        kwargs={},
        options={SIGNATURE_OPTION: sig},
    )
    return message if message_id is None else message.copy(message_id=message_id)


def send(actor_name: str, *args: Any, delay_ms: int | None = None) -> None:
    """Enqueue one signed message for `actor_name` (after `delay_ms`, if given); raises
    if Redis cannot take it, or SecretMissing if there is no secret to sign with."""
    setup_broker().enqueue(_signed(QUEUE_OF[actor_name], actor_name, args), delay=delay_ms)


def send_bootstrap(job_id: int) -> None:
    """Ask a worker to bootstrap `job_id` (queued -> started, publish its tasks)."""
    send(BOOTSTRAP_JOB, job_id)


def send_teardown(job_id: int, revoke_after: int | None = None) -> None:
    """Ask a worker to tear `job_id` down (delete its stream; finish a cancel, its
    revoke going on past task `revoke_after` when an earlier one got that far)."""
    if revoke_after is None:
        send(TEARDOWN_JOB, job_id)
    else:
        send(TEARDOWN_JOB, job_id, revoke_after)


def send_results(job_id: int, items: list[dict[str, Any]], notify: str) -> None:
    """Send one result batch of `job_id`; `notify` is the sender's confirmation subject."""
    send(PROCESS_RESULTS, job_id, items, notify)


def send_retry_notes(job_id: int, notes: list[list[Any]]) -> None:
    """Tell a worker which tasks of `job_id` wait for a redelivery: ``[task, deliveries,
    next attempt (epoch seconds), error]`` each (jobsys.processor.retries)."""
    send(NOTE_RETRIES, job_id, notes)


def send_reconcile() -> None:
    """Ask a worker to run one reconciler pass."""
    send(RECONCILE)


def send_hook(job_id: int, delay_ms: int | None = None) -> None:
    """Ask a worker to deliver `job_id`'s completion hook (after `delay_ms`, if given)."""
    send(DELIVER_HOOK, job_id, delay_ms=delay_ms)


def send_to_actor(queue_name: str, actor_name: str, message_id: str, *args: Any) -> None:
    """Enqueue one signed message for a user's actor (a completion hook target).

    `message_id` is chosen by the caller (the hook's, derived from the job)
    so a resent delivery carries the same id as the first. The receiver can
    check the signature with `jobsys.dramatiq.signing.verify`.
    """
    setup_broker().enqueue(_signed(queue_name, actor_name, args, message_id))

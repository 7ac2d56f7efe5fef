"""Sending a new job's bootstrap message (submit and retry): the job is committed first."""

from __future__ import annotations

import logging

from jobsys.dramatiq.messages import send_bootstrap

log = logging.getLogger(__name__)


def enqueue_bootstrap(job_id: int) -> bool:
    """Send the bootstrap message; False (logged) if Redis is unreachable.

    The job is committed either way: a queued job whose message never
    arrives is re-enqueued by the reconciler.
    """
    try:
        send_bootstrap(job_id)
    except Exception as exc:
        log.warning("bootstrap not enqueued", extra={"job_id": job_id, "error": repr(exc)})
        return False
    return True

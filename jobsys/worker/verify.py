"""Worker middleware: drop (ack, do not run) messages not signed with the deployment's secret.

The signature itself is jobsys.dramatiq.signing; this is where a worker acts
on it, recording each message it drops in the job's event log.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.middleware import SkipMessage

from jobsys.dramatiq.signing import verify
from jobsys.pg.db import connection
from jobsys.pg.events import record_event

log = logging.getLogger(__name__)


def _job_of(message: dramatiq.Message[Any]) -> int | None:
    first = message.args[0] if message.args else None
    return first if isinstance(first, int) and not isinstance(first, bool) else None


class VerifySignatures(dramatiq.Middleware):
    """Worker middleware: drop (ack, do not run) messages not signed with our secret."""

    def before_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.broker.MessageProxy
    ) -> None:
        """Skip the message unless its signature checks out; record why."""
        reason = verify(message._message)
        if reason is None:
            return
        detail = {"actor": message.actor_name, "reason": reason, "message_id": message.message_id}
        try:
            with connection() as conn:
                record_event(conn, _job_of(message._message), "message_rejected", "warning",
                             **detail)  # fmt: skip
        except Exception:
            # The drop matters more than its record: log it either way.
            log.warning("message rejected", extra=detail)
        raise SkipMessage(f"message {reason}")

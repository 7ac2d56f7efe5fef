"""Job stream notices: what processors and gateways hear when a job's stream changes.

A notice is published on core NATS to ``NS.jobs.<CREATED|UPDATED|DELETED>.<stream>``
(jobsys.nats.subjects). UPDATED and DELETED are empty. CREATED, sent once the
stream and its consumer are made as configured, carries what a processor
needs to serve the job: the stream's description and the consumer's
max_deliver and ack_wait. Without it, a processor asks the server for the
stream and the consumer, two requests per job; with hundreds of small jobs a
second they were a fifth of a processor's NATS requests.

A body is a hint, like the notice itself: it says nothing a stream's own
creator could not write in the description, the processor still judges the
pipeline it names (jobsys.pipelines.allow), and a body that is missing (an
older sender, a consumer kept with its own configuration) or not valid makes
the processor ask the server, as before.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from jobsys.nats.subjects import JobNames

log = logging.getLogger(__name__)

# A CREATED body longer than this is not read (a description is a few hundred bytes).
MAX_NOTICE_BODY = 8_192
# Bounds a body's consumer figures must keep (as a consumer's own could be).
MAX_NOTICE_DELIVER = 1_000_000
MAX_NOTICE_ACK_WAIT_S = 7 * 86_400.0


@dataclass(frozen=True)
class StreamTerms:
    """What a processor serves a job by: the stream's description and the consumer's
    max_deliver and ack_wait (seconds)."""

    description: str
    max_deliver: int
    ack_wait_s: float


def created_body(terms: StreamTerms) -> bytes:
    """The CREATED notice's body for a stream and consumer made with `terms`."""
    return json.dumps(
        {
            "description": terms.description,
            "max_deliver": terms.max_deliver,
            "ack_wait_s": terms.ack_wait_s,
        }
    ).encode()


def parse_created_body(data: bytes) -> StreamTerms | None:
    """The terms a CREATED notice's body carries, or None if it carries none or
    they are not valid (the processor then asks the server)."""
    if not data or len(data) > MAX_NOTICE_BODY:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    description = value.get("description")
    max_deliver = value.get("max_deliver")
    ack_wait = value.get("ack_wait_s")
    if not isinstance(description, str):
        return None
    if type(max_deliver) is not int or not 1 <= max_deliver <= MAX_NOTICE_DELIVER:
        return None
    if not isinstance(ack_wait, int | float) or isinstance(ack_wait, bool):
        return None
    if not (math.isfinite(ack_wait) and 0 < ack_wait <= MAX_NOTICE_ACK_WAIT_S):
        return None
    return StreamTerms(description, max_deliver, float(ack_wait))


async def notice_job_stream(nc: NATS, names: JobNames, event: str, body: bytes = b"") -> None:
    """Tell the namespace's processors and gateways that the job's stream was
    `event` (jobsys.nats.subjects, JOB_EVENTS). A hint: one lost (NATS down a
    moment) is caught by their listing, so a failure here fails nothing."""
    try:
        await nc.publish(names.notice(event), body)
    except Exception as exc:
        log.info("job stream notice not sent",
                 extra={"stream": names.stream, "event": event, "error": repr(exc)})  # fmt: skip

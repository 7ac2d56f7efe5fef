"""Settling delivered messages by their reply subjects: acks after commit."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jobsys.nats.admin import parse_server_time
from jobsys.nats.subjects import delivered_at_ns

log = logging.getLogger(__name__)


async def ack_current_replies(
    nc: NATS, js: JetStreamContext, stream: str, replies: Sequence[str]
) -> int:
    """Ack the replies that belong to the stream as it exists now; returns how many.

    The reconciler re-creates a stream NATS lost. A reply delivered by the
    old stream names a sequence that, in the new stream, is another task's
    message: acking it would remove a task nobody ran. So replies delivered
    before the current stream was created are not acked (their message is
    gone with the old stream anyway).
    """
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return 0  # deleted (teardown): nothing left to ack
    created = parse_server_time(info.created)
    if created is None:
        current = list(replies)
    else:
        since_us = int(created.timestamp() * 1_000_000)
        current = [
            r for r in replies if (ts := delivered_at_ns(r)) is None or ts // 1000 >= since_us
        ]
    if len(current) < len(replies):
        log.info(
            "stale acks dropped", extra={"stream": stream, "count": len(replies) - len(current)}
        )
    await ack_replies(nc, current)
    return len(current)


async def ack_replies(nc: NATS, replies: Sequence[str], verb: bytes = b"+ACK") -> None:
    """Acknowledge (or ``-NAK``/``+TERM``) messages by their reply subjects, then flush."""
    for reply in replies:
        await nc.publish(reply, verb)
    await nc.flush(timeout=10)

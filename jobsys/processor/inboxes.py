"""The feeds' pull inboxes: task messages taken from nats-py's parser as they are read.

nats-py hands a subscription's messages to a callback through a queue and a
task of its own, after parsing every message's headers with a general
parser. For the feeds' inboxes (thousands of task messages a second, each
with one header, `Nats-Msg-Id`) that machinery was a third of the
processor's CPU on the echo bench (issue 26). Here the connection's
`_process_msg`, which its parser calls for every message read, is wrapped:
a message for an inbox registered here is built at once, its one header
read directly, and given to the inbox's handler, a plain function; any other
message, and any header this does not recognise (a pull request's status),
takes nats-py's own way, unchanged.

This leans on three internals of nats-py (`Client._process_msg`,
`_process_headers`, `_build_message`, stable since 2.x; tests/fast/test_inboxes.py
runs a feed through them). A handler's exception is logged here: raised
into the parser it would end the connection's read loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from jobsys.nats.subjects import MSG_ID_HEADER

log = logging.getLogger(__name__)

Handler = Callable[[Msg], None]

# The headers of a task message: the version line, its one header, the end.
_ID_PREFIX = b"NATS/1.0\r\n" + MSG_ID_HEADER.encode() + b":"
_END = b"\r\n\r\n"


def task_headers(raw: bytes) -> dict[str, str] | None:
    """The headers of a task message (`Nats-Msg-Id` alone), as nats-py would parse
    them; None for anything else (nats-py parses it)."""
    if not raw.startswith(_ID_PREFIX) or not raw.endswith(_END):
        return None
    value = raw[len(_ID_PREFIX) : -len(_END)]
    if b"\r" in value or b"\n" in value:
        return None
    return {MSG_ID_HEADER: value.strip().decode("utf-8", "replace")}


class Inboxes:
    """Subscriptions of one connection whose messages go straight to a handler."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._handlers: dict[int, Handler] = {}
        self._original = nc._process_msg
        nc._process_msg = self._process_msg  # type: ignore[method-assign]

    async def subscribe(self, subject: str, handler: Handler) -> Subscription:
        """Subscribe; every message on `subject` goes to `handler` as it is read."""
        # No callback: nats-py starts no task for it; its messages never reach
        # its queue (they are taken in `_process_msg`).
        sub = await self._nc.subscribe(subject)
        self._handlers[sub._id] = handler
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        """Stop the subscription (its handler is forgotten first)."""
        self._handlers.pop(sub._id, None)
        await sub.unsubscribe()

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> Any:
        # nats-py's signature: `headers` is None (or empty) for a message without.
        handler = self._handlers.get(sid)
        if handler is None:
            return await self._original(sid, subject, reply, data, headers)
        nc = self._nc
        stats = nc.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        hdr = None
        if headers:
            hdr = task_headers(headers)
            if hdr is None:
                hdr = await nc._process_headers(headers)
        msg = nc._build_message(sid, subject, reply, data, hdr)
        try:
            handler(msg)
        except Exception:
            log.exception("handling a fetched message failed", extra={"subject": msg.subject})
        return None

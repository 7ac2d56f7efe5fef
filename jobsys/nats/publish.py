"""Publishing task messages: a window of acks in flight, one reply inbox per call, one deadline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from jobsys.nats.subjects import MSG_ID_HEADER, JobNames, msg_id
from jobsys.settings import get_settings

# One call of publish_tasks (waiting for room in the window, then for the acks
# of what it published) takes at most this long...
PUBLISH_TIMEOUT_S = 30.0
# ... plus this much per message published in one call (a chunk of 5,000: 10 s more).
PUBLISH_PER_TASK_S = 0.002
# The status header of a reply that says no stream listens on the subject.
_NO_RESPONDERS = "503"


class PublishRefused(Exception):
    """JetStream did not store a task message (no stream, or its error reply)."""


class _Acks:
    """The PubAcks of one call, by the index each reply subject ends with.

    Parsing one small JSON reply per message and writing its sequence into a
    list is all an ack costs: nats-py's `publish_async` makes a future, a
    random token, a semaphore permit and a `PubAck` object for each, which was
    half the worker's publishing CPU.
    """

    def __init__(self, stream: str, total: int, inbox: str, window: int) -> None:
        self.stream = stream
        self.seqs = [0] * total
        self.prefix_len = len(inbox) + 1
        self.sent = 0
        self.acked = 0
        self.low_water = window // 2
        self.room = asyncio.Event()
        self.room.set()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if total == 0:
            self.done.set_result(None)

    async def on_reply(self, msg: Msg) -> None:
        if self.done.done():
            return
        try:
            index = int(msg.subject[self.prefix_len :])
            self.seqs[index] = self._seq(msg)
        except Exception as exc:  # any bad reply ends the call with it: nothing is guessed
            self.done.set_exception(exc)
            self.room.set()
            return
        self.acked += 1
        if self.sent - self.acked <= self.low_water:
            self.room.set()
        if self.acked == len(self.seqs):
            self.done.set_result(None)

    def _seq(self, msg: Msg) -> int:
        headers = msg.headers
        if headers and headers.get("Status") == _NO_RESPONDERS:
            raise PublishRefused(f"no stream listens on the task subject of {self.stream}")
        # A PubAck holds no number orjson could read unlike json (sequences are
        # below 2^64): no need for jsontext's check of the whole text.
        reply: Any = orjson.loads(msg.data)
        if not isinstance(reply, dict):
            raise PublishRefused(f"unreadable PubAck: {msg.data[:200]!r}")
        if "error" in reply:
            raise PublishRefused(f"JetStream refused a task message: {reply['error']}")
        seq = reply.get("seq")
        if reply.get("stream") != self.stream or not isinstance(seq, int) or seq <= 0:
            raise PublishRefused(f"PubAck from another stream or without a place: {reply}")
        return seq


async def publish_tasks(
    nc: NATS,
    names: JobNames,
    job_id: int,
    tasks: Sequence[tuple[int, bytes]],
    window: int | None = None,
    *,
    announce: Callable[[], Awaitable[None]] | None = None,
    announce_after: int = 0,
) -> list[int]:
    """Publish task messages, wait until JetStream stored every one, and return
    each one's stream sequence (in the order of `tasks`).

    A message JetStream drops as a duplicate (same Nats-Msg-Id within the
    duplicate window) is not stored again; its PubAck names the sequence of
    the message already there, which is where that task sits.

    At most `window` (the `publish_window` setting) acks are awaited at once;
    each reply comes to this call's own inbox, `<inbox>.<index>`. An ack NATS
    loses (the server restarted with a window in flight) never arrives, so
    the whole call has one deadline, and its inbox is unsubscribed whatever
    way it ends: a late ack then goes nowhere and no state outlives the call
    (the chaos suite once found a window's permits held for ever). The first
    refusal (no stream: a cancel deleted it; a JetStream error) ends the call.

    `announce`, if given, is awaited once in this call, as soon as it sees
    `announce_after` of the messages stored (all of them if there are fewer):
    the job's CREATED notice, sent while the rest are still being published.
    """
    limit = window or get_settings().publish_window
    announce_at = min(announce_after, len(tasks))
    inbox = nc.new_inbox()
    acks = _Acks(names.stream, len(tasks), inbox, limit)
    deadline = PUBLISH_TIMEOUT_S + len(tasks) * PUBLISH_PER_TASK_S
    sub = await nc.subscribe(f"{inbox}.*", cb=acks.on_reply)
    try:
        async with asyncio.timeout(deadline):
            for index, (task_no, payload) in enumerate(tasks):
                if acks.sent - acks.acked >= limit:
                    acks.room.clear()
                    await acks.room.wait()
                if acks.done.done():
                    break  # refused: stop publishing, the error is raised below
                await nc.publish(
                    names.subject,
                    payload,
                    reply=f"{inbox}.{index}",
                    headers={MSG_ID_HEADER: msg_id(job_id, task_no)},
                )
                acks.sent += 1
                if announce is not None and acks.acked >= announce_at:
                    await announce()
                    announce = None
            await acks.done
            if announce is not None:
                await announce()
    finally:
        if acks.done.done() and not acks.done.cancelled():
            acks.done.exception()  # seen: no "exception never retrieved" after a timeout
        # A closed or reconnecting connection cannot unsubscribe; the call's
        # outcome (an error already on its way, or the acks) stands.
        with contextlib.suppress(NatsError):
            await sub.unsubscribe()
    return acks.seqs

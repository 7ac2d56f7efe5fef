"""Publishing task messages: async, in a window of acks in flight, with one deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from nats.js import JetStreamContext

from jobsys.nats.subjects import MSG_ID_HEADER, JobNames, msg_id

# One call of publish_tasks (waiting for permits of the async window, then for
# the acks of what it published) takes at most this long...
PUBLISH_TIMEOUT_S = 30.0
# ... plus this much per message published in one call (a chunk of 5,000: 10 s more).
PUBLISH_PER_TASK_S = 0.002


async def publish_tasks(
    js: JetStreamContext, names: JobNames, job_id: int, tasks: Sequence[tuple[int, str]]
) -> list[int]:
    """Publish task messages, wait until JetStream stored every one, and return
    each one's stream sequence (in the order of `tasks`).

    A message JetStream drops as a duplicate (same Nats-Msg-Id within the
    duplicate window) is not stored again; its PubAck names the sequence of
    the message already there, which is where that task sits.

    Async publish keeps a window of acks in flight (the JetStream context's
    `publish_async_max_pending`), which is ~8x faster than awaiting each.
    Each ack in flight holds one of the window's permits until it arrives. An
    ack NATS loses (the server restarted with a window in flight) never
    arrives: so waiting for a permit is bounded too, and whatever way this
    ends, every publish of ours still in flight is cancelled, which gives its
    permit back. Otherwise the connection's window stays taken for ever and
    every later publish in this process waits (the chaos suite found it).
    """
    futures: list[asyncio.Future[Any]] = []
    # One deadline for the whole call, not one per message: nats-py's own
    # bound on the wait for a permit (`wait_stall`) costs a task and a timer
    # per message, which made bootstrap publishing ~2x slower.
    deadline = PUBLISH_TIMEOUT_S + len(tasks) * PUBLISH_PER_TASK_S
    try:
        async with asyncio.timeout(deadline):
            for task_no, payload in tasks:
                fut = await js.publish_async(
                    names.subject,
                    payload.encode("utf-8"),
                    headers={MSG_ID_HEADER: msg_id(job_id, task_no)},
                )
                futures.append(fut)
            results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        for fut in futures:
            fut.cancel()  # a no-op for those answered
    seqs: list[int] = []
    for res in results:
        if isinstance(res, BaseException):
            raise res
        seqs.append(res.seq)
    return seqs

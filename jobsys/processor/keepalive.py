"""Keep-alive: the messages a processor holds stay in progress in NATS, up to a deadline.

A task message is held from its fetch until its outcome is recorded (or it
is handed back): while it waits for a slot, while it runs, and while its
result waits for a worker to record it. JetStream redelivers a message not
acknowledged within the consumer's ack_wait, and counts every delivery
against max_deliver, so one shared ticker sends `+WPI` (work in progress)
for each held message every ack_wait/3.

A running task has a deadline (its job's time limit): past it, the ticker
stops keeping it alive, so even a task whose execution cannot be stopped
goes back to NATS. Results have no deadline: they are held until recorded,
however long the recorder takes (see jobsys.processor.outbox).
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.client import Client as NATS

TICK_MIN_S = 0.05
TICK_MAX_S = 1.0
NO_DEADLINE = float("inf")

log = logging.getLogger(__name__)


class KeepAlive:
    """Which messages this processor holds, and the ticker that keeps them alive."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        # reply subject -> [next ping at, deadline, ping period]
        self._held: dict[str, list[float]] = {}
        self._shortest = TICK_MAX_S * 3

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, reply: str, ack_wait_s: float) -> None:
        """Keep the message alive from now on (no deadline yet)."""
        period = ack_wait_s / 3
        if period < self._shortest:
            self._shortest = period
        self._held[reply] = [time.monotonic() + period, NO_DEADLINE, period]

    def until(self, reply: str, deadline: float) -> None:
        """Stop keeping it alive after `deadline` (monotonic; inf: no deadline)."""
        entry = self._held.get(reply)
        if entry is not None:
            entry[1] = deadline

    def release(self, reply: str) -> None:
        """No longer held (acked, handed back, or its stream is gone)."""
        self._held.pop(reply, None)

    def release_all(self, replies: list[str]) -> None:
        """`release` for many (a confirmed batch)."""
        pop = self._held.pop
        for reply in replies:
            pop(reply, None)

    async def run(self) -> None:
        """The ticker (a side task of the processor)."""
        while True:
            await asyncio.sleep(min(max(self._shortest / 2, TICK_MIN_S), TICK_MAX_S))
            now = time.monotonic()
            due = [
                (reply, entry)
                for reply, entry in self._held.items()
                if entry[0] <= now and now < entry[1]
            ]
            if not due:
                continue
            try:
                for reply, entry in due:
                    entry[0] = now + entry[2]
                    await self._nc.publish(reply, b"+WPI")
                await self._nc.flush(timeout=5)
            except Exception as exc:
                # NATS reconnecting: the next tick tries again (entries not
                # pinged yet are still due).
                log.debug("keep-alive pings failed", extra={"error": repr(exc)})

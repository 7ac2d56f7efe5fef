"""Fair fetch tickets: a processor's tasks in flight, shared among its jobs.

Each task a feed fetches holds a ticket until its outcome is known. Before
fetching, a feed takes tickets (up to what it wants) in FIFO order within
its job's priority, higher priorities first, so a new job's feed queues
behind at most one turn of each older job of its priority instead of
behind its whole backlog, and when tickets are short a higher-priority
job's tasks are fetched first (weights act where slots are handed out,
jobsys.processor.shares). The capacity bounds how many tasks one processor
holds fetched and not yet run.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque


class Tickets:
    """A FIFO counting semaphore whose waiters take several units at once."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        # The priority of each waiter, in the same order (highest first).
        self._ranks: deque[int] = deque()

    @property
    def free(self) -> int:
        """Tickets nobody holds."""
        return max(self.capacity - self.in_use, 0)

    def grow(self, capacity: int) -> None:
        """Raise the capacity to at least `capacity` (a batch job needs whole batches)."""
        if capacity > self.capacity:
            self.capacity = capacity
            self._wake()

    async def take(self, limit: int, priority: int = 0) -> int:
        """Wait for this caller's turn (behind waiters of its priority and higher),
        then take up to `limit` tickets (at least one)."""
        if not self._waiters and self.free:
            n = min(limit, self.free)
            self.in_use += n
            return n
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(fut, priority, first=False)
        try:
            while True:
                await fut
                if self.free:
                    n = min(limit, self.free)
                    self.in_use += n
                    return n
                # Woken but someone else took them: wait again, still first of its priority.
                fut = asyncio.get_running_loop().create_future()
                self._enqueue(fut, priority, first=True)
        except asyncio.CancelledError:
            if fut in self._waiters:
                i = self._waiters.index(fut)
                del self._waiters[i]
                del self._ranks[i]
            elif fut.done() and not fut.cancelled():
                self._wake()  # our turn came as we were cancelled: pass it on
            raise
        finally:
            if self.free:
                self._wake()

    def force(self, n: int) -> None:
        """Take `n` tickets now, even past the capacity (a message that came anyway)."""
        self.in_use += n

    def give(self, n: int) -> None:
        """Hand back `n` tickets."""
        self.in_use -= n
        self._wake()

    def _enqueue(self, fut: asyncio.Future[None], priority: int, first: bool) -> None:
        # Ranks are stored negated so the deque is ascending; a waiter goes after
        # (or, `first`, before) those of its own priority.
        rank = -priority
        place = bisect.bisect_left if first else bisect.bisect_right
        i = place(self._ranks, rank)
        self._waiters.insert(i, fut)
        self._ranks.insert(i, rank)

    def _wake(self) -> None:
        while self._waiters and self.free:
            fut = self._waiters.popleft()
            self._ranks.popleft()
            if not fut.done():
                fut.set_result(None)
                return

"""Fair fetch tickets: a processor's tasks in flight, shared FIFO among its jobs.

Each task a feed fetches holds a ticket until its outcome is known. Before
fetching, a feed takes tickets (up to what it wants) in FIFO order, so a new
job's feed queues behind at most one turn of each older job instead of
behind its whole backlog. The capacity bounds how many tasks one processor
holds fetched and not yet run.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Tickets:
    """A FIFO counting semaphore whose waiters take several units at once."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        """Tickets nobody holds."""
        return max(self.capacity - self.in_use, 0)

    def grow(self, capacity: int) -> None:
        """Raise the capacity to at least `capacity` (a batch job needs whole batches)."""
        if capacity > self.capacity:
            self.capacity = capacity
            self._wake()

    async def take(self, limit: int) -> int:
        """Wait for this caller's turn, then take up to `limit` tickets (at least one)."""
        if not self._waiters and self.free:
            n = min(limit, self.free)
            self.in_use += n
            return n
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            while True:
                await fut
                if self.free:
                    n = min(limit, self.free)
                    self.in_use += n
                    return n
                # Woken but someone else took them: wait again, still first.
                fut = asyncio.get_running_loop().create_future()
                self._waiters.appendleft(fut)
        except asyncio.CancelledError:
            if fut in self._waiters:
                self._waiters.remove(fut)
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

    def _wake(self) -> None:
        while self._waiters and self.free:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

"""Rate limits on task starts: a job's (`jobsys submit --rate`) and its pipeline's
(JOBSYS_RATE_LIMITS), shared by every processor through token buckets in Redis
(jobsys.dramatiq.rate_buckets).

A limited job's queue in this processor has a `Gate`: execution hands a slot
only as many of its tasks as the gate holds tokens, so the tasks wait in the
queue -- fetched once, kept in progress, never nak'ed, so no delivery is
charged -- while slots serve other jobs. A refill loop per gate takes tokens
from the shared buckets while the job has tasks waiting here and no token,
and sleeps as long as the buckets say when they are empty. How far ahead such
a job is fetched is capped by its rate (`ahead_cap`), so one processor does
not hold all of a slow job's tasks while others could start them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from jobsys.dramatiq.rate_buckets import Bucket, RateBuckets, bucket
from jobsys.settings import Settings

log = logging.getLogger(__name__)

# A limited job is fetched ahead by about this many seconds of its rate.
AHEAD_S = 0.5
# A refill that got fewer tokens than it asked for (the buckets are empty)
# asks again after at least this long, so tokens come in batches (about 40
# per Redis call at 2,000/s: bench/rate_limit.py), and at most MAX_WAIT_S.
REFILL_S = 0.02
MAX_WAIT_S = 1.0
# Redis could not be asked: try again after this long (the tasks wait).
ERROR_WAIT_S = 1.0


@dataclass(eq=False)
class Gate:
    """A limited job's tokens in this processor: each starts one task."""

    job_id: int
    buckets: list[Bucket]
    tokens: int = 0
    active: bool = True
    wanted: asyncio.Event = field(default_factory=asyncio.Event)
    taken: int = 0

    @property
    def rate(self) -> float:
        """The tightest of its limits, tasks per second."""
        return min(b.rate for b in self.buckets)

    def ahead_cap(self) -> int:
        """Most of the job's tasks worth fetching ahead here."""
        return max(2, math.ceil(self.rate * AHEAD_S))

    def spend(self, n: int) -> int:
        """Take up to `n` tokens for task starts; how many were available."""
        k = min(n, self.tokens)
        self.tokens -= k
        if self.tokens == 0:
            self.wanted.set()
        return k


class Rates:
    """The gates of the limited jobs this processor serves, and their refill loops."""

    def __init__(
        self,
        settings: Settings,
        waiting: Callable[[int], int],
        wake: Callable[[], None],
        spawn: Callable[..., None],
    ) -> None:
        self.settings = settings
        # waiting(job_id): the job's tasks queued here; wake(): tokens arrived.
        self._waiting = waiting
        self._wake = wake
        self._spawn = spawn
        self._buckets: RateBuckets | None = None
        self.gates: dict[int, Gate] = {}

    def gate_for(self, job_id: int, pipeline: str, job_rate: float | None) -> Gate | None:
        """The gate of a job with a rate of its own or a limited pipeline; None if neither."""
        limits: list[Bucket] = []
        if job_rate is not None:
            limits.append(bucket(self.settings, "job", str(job_id), job_rate))
        pipeline_rate = self.settings.pipeline_rates.get(pipeline)
        if pipeline_rate is not None:
            limits.append(bucket(self.settings, "pipeline", pipeline, pipeline_rate))
        if not limits:
            return None
        gate = Gate(job_id, limits)
        self.gates[job_id] = gate
        if self._buckets is None:
            self._buckets = RateBuckets(self.settings)
        self._spawn(self._refill(gate), f"rate limit of job {job_id}")
        return gate

    def drop(self, job_id: int) -> None:
        """The job is no longer served here: stop its refill loop."""
        gate = self.gates.pop(job_id, None)
        if gate is not None:
            gate.active = False
            gate.wanted.set()

    async def _refill(self, gate: Gate) -> None:
        assert self._buckets is not None
        while gate.active:
            want = min(self._waiting(gate.job_id), min(b.capacity for b in gate.buckets))
            if gate.tokens > 0 or want <= 0:
                gate.wanted.clear()
                # Woken when a token is spent or a task queued (at the latest
                # every MAX_WAIT_S: a queue may fill without telling).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gate.wanted.wait(), MAX_WAIT_S)
                continue
            try:
                granted, wait_s = await self._buckets.take(gate.buckets, want)
            except Exception as exc:
                log.warning(
                    "rate limit tokens not available; the job's tasks wait",
                    extra={"job_id": gate.job_id, "error": repr(exc)},
                )
                await asyncio.sleep(ERROR_WAIT_S)
                continue
            if granted:
                gate.tokens += granted
                gate.taken += granted
                self._wake()
            if granted < want:
                await asyncio.sleep(min(max(wait_s, REFILL_S), MAX_WAIT_S))

    async def close(self) -> None:
        """Stop every refill loop and close the Redis pool."""
        for job_id in list(self.gates):
            self.drop(job_id)
        if self._buckets is not None:
            await self._buckets.close()

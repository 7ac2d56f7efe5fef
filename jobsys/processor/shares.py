"""Shares: which job's tasks a free execution slot runs next, by priority then weight.

When slots are short, the jobs with queued work at the highest priority
take every slot; lower priorities get only what those leave (their queue
ran dry, a batch is still filling). Among jobs of one priority, slots are
shared in proportion to weight by stride scheduling: each job has a *pass*
(virtual time); the job with the lowest pass runs next and its pass moves
on by what the call costs divided by its weight. The cost is the slot time
the call is expected to take (its tasks times the job's measured seconds
per task), so a job of short tasks does not get more slot time for running
more calls.

A job that had no work (or is new) starts at the priority's current
virtual time, not at its old pass: it cannot bank credit while idle and
then take every slot for a while, nor is it pushed behind the others.

Pure logic (no asyncio, no NATS): tests/fast/test_shares.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass
class Share:
    """One job's place in the schedule."""

    priority: int = 0
    weight: int = 1
    # Virtual time: slot-seconds run divided by weight, from where it joined.
    passed: float = 0.0


class Shares:
    """Stride scheduling of slots among jobs, highest priority first."""

    def __init__(self) -> None:
        self._shares: dict[int, Share] = {}
        # Per priority, the pass of the last job picked: where a job that
        # comes back with work (or a new one) joins.
        self._now: dict[int, float] = {}

    def set(self, job_id: int, priority: int, weight: int) -> None:
        """The job's priority and weight (new, or changed by `jobsys set`)."""
        share = self._shares.get(job_id)
        if share is None:
            self._shares[job_id] = Share(priority, max(weight, 1), self._now.get(priority, 0.0))
            return
        if share.priority != priority:
            share.passed = self._now.get(priority, 0.0)
        share.priority = priority
        share.weight = max(weight, 1)

    def forget(self, job_id: int) -> None:
        """The job is no longer served here."""
        self._shares.pop(job_id, None)

    def order(self, job_ids: Iterable[int]) -> Iterator[int]:
        """The jobs with work, in the order they should get the next slot: highest
        priority first, then lowest pass. Jobs behind the priority's virtual time
        (they had no work) are brought up to it first. Lazily: the first is
        found in one pass; the rest are sorted only if the caller asks for them
        (the first had no call ready)."""
        ranked = []
        for job_id in job_ids:
            share = self._shares.get(job_id)
            if share is None:
                self.set(job_id, 0, 1)
                share = self._shares[job_id]
            now = self._now.get(share.priority)
            if now is not None and share.passed < now:
                share.passed = now
            ranked.append((-share.priority, share.passed, job_id))
        if not ranked:
            return
        first = min(ranked)
        yield first[2]
        ranked.remove(first)
        ranked.sort()
        for _, _, job_id in ranked:
            yield job_id

    def charge(self, job_id: int, cost: float) -> None:
        """The job got a slot for a call expected to take `cost` slot-seconds."""
        share = self._shares.get(job_id)
        if share is None:
            return
        self._now[share.priority] = share.passed
        share.passed += cost / share.weight

    def share_of(self, job_id: int) -> Share | None:
        """The job's place (for logs and tests)."""
        return self._shares.get(job_id)

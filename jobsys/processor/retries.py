"""Retries made visible: what a processor tells Postgres about tasks waiting for a redelivery.

When a task fails transiently the processor naks it with a delay
(jobsys.processor.backoff) and notes here its delivery count, when it will
be delivered again and why it failed. Notes are sent in batches, one
Dramatiq message per job per flush, to the `note_retries` actor, which
writes them on the task's ledger row while it is still pending: `jobsys
tasks JOB --status pending` shows them and `blocked` says "waiting for
retry delay". They are for people only: nothing is counted from them, so a
note lost with Redis costs nothing but its display.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jobsys.dramatiq.messages import send_retry_notes

log = logging.getLogger(__name__)

# Notes wait at most this long to be sent (many retries share one message).
FLUSH_S = 0.5
# At most this many notes per message.
NOTES_PER_MESSAGE = 1_000


class RetryNotes:
    """Notes of retries, by job, until the next flush (see the module docstring)."""

    def __init__(self) -> None:
        self._notes: dict[int, list[list[Any]]] = {}
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="jobsys-retry-notes")
        self.sent = 0
        self.dropped = 0

    def add(self, job_id: int, task_no: int, deliveries: int, delay_s: float, error: str) -> None:
        """Task `task_no` of `job_id` failed its `deliveries`-th delivery with `error`
        and is delivered again in `delay_s` seconds."""
        next_at = time.time() + delay_s
        self._notes.setdefault(job_id, []).append([task_no, deliveries, next_at, error])

    async def run(self) -> None:
        """Send what was noted every FLUSH_S (a side task of the processor)."""
        while True:
            await asyncio.sleep(FLUSH_S)
            await self.flush()

    async def flush(self) -> None:
        """Send every note taken so far; a note that cannot be sent is dropped."""
        notes, self._notes = self._notes, {}
        loop = asyncio.get_running_loop()
        for job_id, job_notes in notes.items():
            for i in range(0, len(job_notes), NOTES_PER_MESSAGE):
                chunk = job_notes[i : i + NOTES_PER_MESSAGE]
                try:
                    await loop.run_in_executor(self._sender, send_retry_notes, job_id, chunk)
                    self.sent += len(chunk)
                except Exception as exc:
                    self.dropped += len(chunk)
                    log.info(
                        "retry notes not sent (display only)",
                        extra={"job_id": job_id, "notes": len(chunk), "error": repr(exc)},
                    )

    def close(self) -> None:
        """Stop the sender thread (after a last flush by the caller)."""
        self._sender.shutdown(wait=True)

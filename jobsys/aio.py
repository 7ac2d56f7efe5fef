"""The Python API as coroutines, for asyncio programs and notebooks' event loops.

The same names and methods as `jobsys` (`submit`, `get`, a `Job` handle with
`status`, `wait`, `results`, `failures`, `cancel`, `retry`), awaited:

    job = await jobsys.aio.submit("echo", rows)      # rows may be an async iterable
    final = await job.wait()
    async for row in job.results():
        ...

Postgres is reached through jobsys's own (synchronous) pool on worker threads
(`asyncio.to_thread`): the event loop never blocks, and there is one code path
to keep exact. Items from an async iterable are pulled one by one as the
submit's COPY asks for them, so they are never all held either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeVar

from jobsys.api import job as sync
from jobsys.api.cancel import CancelResult
from jobsys.api.export import results as sync_results
from jobsys.api.items import Items
from jobsys.api.read import get_job
from jobsys.api.retry import DEFAULT_RETRY
from jobsys.api.submit import submit as sync_submit
from jobsys.errors import WaitTimedOut
from jobsys.lifecycle.blocked import why_blocked
from jobsys.lifecycle.states import FINAL
from jobsys.models import JobView

T = TypeVar("T")

# Rows fetched per hop to a worker thread while iterating results.
RESULT_CHUNK = 500
# How often `wait` looks at the job.
POLL_S = 0.25


class Job:
    """`jobsys.Job` with coroutine methods."""

    __slots__ = ("id",)

    def __init__(self, job_id: int) -> None:
        self.id = job_id

    def __repr__(self) -> str:
        return f"aio.Job({self.id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("jobsys.aio.Job", self.id))

    @property
    def sync(self) -> sync.Job:
        """The same job's synchronous handle."""
        return sync.Job(self.id)

    async def status(self) -> JobView:
        """`jobsys.Job.status`."""
        return await asyncio.to_thread(self.sync.status)

    async def wait(self, timeout: float | None = None, progress: bool = True) -> JobView:
        """`jobsys.Job.wait`, polling without blocking the event loop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with sync.progress_bar(self.id, progress) as on_update:
            while True:
                view = await asyncio.to_thread(get_job, self.id)
                if on_update is not None:
                    await asyncio.to_thread(on_update, view)
                if view.status in FINAL:
                    return view
                if deadline is not None and time.monotonic() > deadline:
                    why = await asyncio.to_thread(why_blocked, view)
                    raise WaitTimedOut(self.id, view.status, timeout or 0.0, why)
                await asyncio.sleep(POLL_S)

    def results(self, status: str | Iterable[str] | None = "done") -> AsyncIterator[dict[str, Any]]:
        """`jobsys.Job.results` as an async iterator (streamed in chunks)."""
        return _iterate(lambda: sync_results(self.id, status))

    def failures(self) -> AsyncIterator[dict[str, Any]]:
        """`jobsys.Job.failures` as an async iterator."""
        return _iterate(lambda: sync_results(self.id, sync.FAILURES))

    async def cancel(self) -> CancelResult:
        """`jobsys.Job.cancel`."""
        return await asyncio.to_thread(self.sync.cancel)

    async def retry(
        self, statuses: Iterable[str] = DEFAULT_RETRY, error_like: str | None = None
    ) -> Job:
        """`jobsys.Job.retry`."""
        child = await asyncio.to_thread(self.sync.retry, statuses, error_like)
        return Job(child.id)


async def submit(pipeline: str, items: Items | AsyncIterable[Any], **options: Any) -> Job:
    """`jobsys.submit`; `items` may also be an async iterable of dicts or JSON texts."""
    if isinstance(items, AsyncIterable):
        items = _pulled(items, asyncio.get_running_loop())
    made = await asyncio.to_thread(sync_submit, pipeline, items, **options)
    return Job(made.id)


async def get(job_id: int) -> Job:
    """`jobsys.get`: the handle of an existing job (raises JobNotFound)."""
    await asyncio.to_thread(sync.get, job_id)
    return Job(job_id)


def _pulled(items: AsyncIterable[Any], loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    """An async iterable read from a worker thread, one item per request."""
    source = items.__aiter__()
    while True:
        try:
            yield asyncio.run_coroutine_threadsafe(_next(source), loop).result()
        except StopAsyncIteration:
            return


async def _next(source: AsyncIterator[T]) -> T:
    return await source.__anext__()


async def _iterate(
    open_rows: Callable[[], Iterator[dict[str, Any]]],
) -> AsyncIterator[dict[str, Any]]:
    rows = await asyncio.to_thread(open_rows)
    try:
        while chunk := await asyncio.to_thread(_take, rows, RESULT_CHUNK):
            for row in chunk:
                yield row
    finally:
        await asyncio.to_thread(rows.close)  # type: ignore[attr-defined]


def _take(rows: Iterator[T], n: int) -> list[T]:
    out = []
    for row in rows:
        out.append(row)
        if len(out) >= n:
            break
    return out

"""Observation: what the database and NATS say about the active jobs.

The database side is one view, `job_reconcile_state` (every active job's
counters, ledger counts, idle time, recorded stream incarnation). On the
NATS side, a pass looks at everything at once (one paged stream listing, then consumer
info for started jobs with a stream, at most INFO_CONCURRENCY requests in
flight); a job about to be acted on is looked at again, exactly, under its
lock (`observe_job`, which also counts its MAX_DELIVERIES advisories).
"""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo, StreamInfo
from nats.js.errors import NotFoundError

from jobsys.nats.admin import all_streams_info
from jobsys.nats.bridge import bridge
from jobsys.nats.subjects import JobNames, job_id_of_stream, tasks_wildcard
from jobsys.pg.db import connection
from jobsys.pg.queries import Q
from jobsys.reconciler.state import JobState, NatsView

# NATS info requests in flight at once while a pass looks at every job.
INFO_CONCURRENCY = 64
# NATS calls of one pass (or of one job's look or repair) may take this long.
NATS_TIMEOUT_S = 120.0


def read_active_jobs() -> list[JobState]:
    """Every active job, as the database has it (one query)."""
    with connection() as conn:
        rows = conn.execute(Q.reconcile_jobs).fetchall()
    return [JobState.of(r) for r in rows]


def read_job(job_id: int) -> JobState | None:
    """One job as the database has it now; None once it is final (or unknown)."""
    with connection() as conn:
        row = conn.execute(Q.reconcile_job, {"job_id": job_id}).fetchone()
    return JobState.of(row) if row is not None else None


async def _consumer_info(js: JetStreamContext, names: JobNames) -> ConsumerInfo | None:
    try:
        return await js.consumer_info(names.stream, names.consumer)
    except NotFoundError:
        return None


async def observe_job(js: JetStreamContext, names: JobNames) -> NatsView:
    """NATS's exact view of one job, advisories counted."""
    try:
        stream = await js.stream_info(names.stream, subjects_filter=names.max_deliveries)
    except NotFoundError:
        return NatsView.of(None, None, None)
    consumer = await _consumer_info(js, names)
    advisories = (stream.state.subjects or {}).get(names.max_deliveries, 0)
    return NatsView.of(stream, consumer, advisories)


def look_at_job(namespace: str, job_id: int) -> NatsView:
    """`observe_job` from sync code (the bridge's connection)."""
    names = JobNames.of(namespace, job_id)
    return bridge().run(lambda nc, js: observe_job(js, names), timeout=NATS_TIMEOUT_S)


async def _observe_all(
    js: JetStreamContext, namespace: str, started: list[int]
) -> tuple[dict[int, NatsView], dict[str, int]]:
    streams: dict[str, StreamInfo] = {}
    for info in await all_streams_info(js, tasks_wildcard(namespace)):
        if info.config.name:
            streams[info.config.name] = info
    job_streams = {
        name: job_id
        for name in streams
        if (job_id := job_id_of_stream(namespace, name)) is not None
    }
    gate = asyncio.Semaphore(INFO_CONCURRENCY)

    async def one(job_id: int) -> tuple[int, NatsView]:
        names = JobNames.of(namespace, job_id)
        stream = streams.get(names.stream)
        if stream is None:
            # A paged listing can miss a live stream: ask for this one before
            # calling it missing (a missing stream is re-created).
            async with gate:
                return job_id, await observe_job(js, names)
        async with gate:
            consumer = await _consumer_info(js, names)
        return job_id, NatsView.of(stream, consumer, None)

    views = dict(await asyncio.gather(*(one(j) for j in started)))
    return views, job_streams


def look_at_all(namespace: str, started: list[int]) -> tuple[dict[int, NatsView], dict[str, int]]:
    """Views of the `started` jobs, and every job stream of the namespace
    (``{stream name: job id}``)."""
    return bridge().run(lambda nc, js: _observe_all(js, namespace, started), timeout=NATS_TIMEOUT_S)

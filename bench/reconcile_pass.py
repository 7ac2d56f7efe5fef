"""Benchmark: one reconciler pass over many active jobs.

Creates N started jobs (2 tasks each, a real stream and consumer each) in a
throw-away database and NATS namespace, then times a pass that finds
nothing (every job healthy: one SQL query, one paged stream listing, one
consumer info per job) and a pass that repairs every job's counters (the
per-job lock, re-read and repair transaction). Everything is removed after.

Also two passes over the same jobs all waiting (idle, their tasks in NATS, no
processor): the first records a finding per job, the next finds each
unchanged. Above FILE_STREAMS_MAX jobs the streams are in memory (see there).

    python -m bench.reconcile_pass [--quick] [--jobs N] [--memory-streams]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from typing import Any

import psycopg
from nats.js.api import StorageType
from psycopg.conninfo import make_conninfo

from bench.jobrows import job_row

TASKS_PER_JOB = 2
# Passes over the waiting jobs: the first records the findings, the rest see
# them unchanged.
WAITING_PASSES = 3
# Rounds of stream deletes at the end (see `_teardown`).
WIPE_ROUNDS = 5
# Above this many jobs the job streams are made in memory: nats-server 2.9
# holds two open files per file-backed stream, and 10,000 of them exhaust a
# 20,000 open-file limit (the server then fails other clients too). A pass's
# look (stream listing, consumer info) reads no stored message either way.
FILE_STREAMS_MAX = 5_000


def _setup_env() -> tuple[dict[str, str | None], str, str]:
    from jobsys.settings import Settings

    base = Settings()
    run_id = uuid.uuid4().hex[:8]
    db_name = f"jobsys_bench_{run_id}"
    admin = make_conninfo(base.database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    new = {
        "JOBSYS_DATABASE_URL": make_conninfo(base.database_url, dbname=db_name),
        "JOBSYS_NAMESPACE": f"b{run_id}",
    }
    saved = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    _reset()
    return saved, admin, db_name


def _reset() -> None:
    from jobsys.nats.bridge import close_bridge
    from jobsys.pg.db import close_pool
    from jobsys.settings import reset_settings

    close_bridge()
    close_pool()
    reset_settings()


class _MemoryStorage:
    """Stands in for `StorageType` in `jobsys.nats.admin`: job streams in memory."""

    FILE = StorageType.MEMORY


def _make_jobs(n: int, memory: bool = False) -> list[int]:
    from jobsys.lifecycle.states import Status, transition
    from jobsys.nats import admin
    from jobsys.nats.admin import ensure_job_stream
    from jobsys.nats.bridge import bridge
    from jobsys.nats.publish import publish_tasks
    from jobsys.nats.subjects import JobNames
    from jobsys.pg.db import connection
    from jobsys.pg.queries import Q
    from jobsys.settings import get_settings

    settings = get_settings()
    ids: list[int] = []
    with connection() as conn, conn.transaction():
        for _ in range(n):
            row = conn.execute(Q.insert_job, job_row("bench", TASKS_PER_JOB)).fetchone()
            assert row is not None
            ids.append(row["id"])
        with conn.cursor().copy(Q.copy_tasks) as copy:
            for job_id in ids:
                for task_no in range(TASKS_PER_JOB):
                    copy.write_row((job_id, task_no, '{"n": 1}'))
        conn.execute("UPDATE jobs SET published_count = total_count WHERE id = ANY(%s)", (ids,))
        for job_id in ids:
            transition(conn, job_id, Status.STARTED, {Status.QUEUED}, "bench")

    async def streams(nc: Any, js: Any) -> None:
        gate = asyncio.Semaphore(32)

        async def one(job_id: int) -> None:
            names = JobNames.of(settings.namespace, job_id)
            async with gate:
                await ensure_job_stream(
                    nc, js, names, {"pipeline": "echo", "max_deliver": 5}, settings
                )
                tasks = [(t, b'{"n": 1}') for t in range(TASKS_PER_JOB)]
                await publish_tasks(nc, names, job_id, tasks)

        await asyncio.gather(*(one(j) for j in ids))

    if memory:
        admin.StorageType = _MemoryStorage  # type: ignore[misc,assignment]
    try:
        bridge().run(streams, timeout=600)
    finally:
        # bench.run runs the other benchmarks in this process after.
        admin.StorageType = StorageType  # type: ignore[misc]
    return ids


def _teardown(saved: dict[str, str | None], admin: str, db_name: str) -> None:
    from jobsys.nats.bridge import bridge
    from jobsys.settings import get_settings

    prefix = f"{get_settings().namespace}_"

    async def wipe(nc: Any, js: Any) -> None:
        from jobsys.nats.admin import all_streams_info

        # A server near its open-file limit (10,000 file streams) refuses some
        # deletes: try those again, a few rounds, rather than leave them behind.
        for _ in range(WIPE_ROUNDS):
            names = [
                info.config.name
                for info in await all_streams_info(js)
                if (info.config.name or "").startswith(prefix)
            ]
            if not names:
                return
            for name in names:
                try:
                    await js.delete_stream(name)
                except Exception as exc:
                    print(f"delete {name}: {exc!r}", file=sys.stderr)
            await asyncio.sleep(1)

    try:
        bridge().run(wipe, timeout=600)
    finally:
        _reset()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reset()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def run(quick: bool, jobs: int | None = None, memory: bool = False) -> list[dict[str, Any]]:
    """Time a healthy pass, two passes over jobs that all wait (idle, their tasks in
    NATS, no processor), and a repairing pass, over 1,000 (quick) or 10,000 jobs
    (or `jobs`); `memory`: the job streams in memory, not on file (always above
    FILE_STREAMS_MAX jobs)."""
    n = jobs or (1_000 if quick else 10_000)
    memory = memory or n > FILE_STREAMS_MAX
    saved, admin, db_name = _setup_env()
    try:
        from jobsys.pg.db import connection
        from jobsys.pg.migrate import migrate
        from jobsys.reconciler import reconcile_pass

        migrate()
        ids = _make_jobs(n, memory)
        reconcile_pass()  # warm: connections, pool, NATS bridge
        # Setting 10,000 jobs up can take longer than lost_after_s: they are
        # healthy (not idle) for this pass.
        with connection() as conn:
            conn.execute("UPDATE jobs SET progress_at = now() WHERE id = ANY(%s)", (ids,))
        started = time.perf_counter()
        healthy = reconcile_pass()
        healthy_s = time.perf_counter() - started
        assert healthy.jobs_checked == n and not healthy.findings, healthy.findings[:3]

        # Every job idle for an hour with its tasks still in NATS: `waiting`.
        with connection() as conn:
            conn.execute(
                "UPDATE jobs SET progress_at = now() - interval '1 hour',"
                " started_at = now() - interval '1 hour', created_at = now() - interval '1 hour'"
                " WHERE id = ANY(%s)",
                (ids,),
            )
        waits: list[float] = []
        for _ in range(WAITING_PASSES):
            started = time.perf_counter()
            waiting = reconcile_pass()
            waits.append(time.perf_counter() - started)
            seen = sum(1 for f in waiting.findings if f.kind == "waiting")
            assert seen == n, f"{seen} of {n} jobs found waiting"
        with connection() as conn:
            conn.execute("UPDATE jobs SET progress_at = now() WHERE id = ANY(%s)", (ids,))

        with connection() as conn:
            conn.execute("UPDATE jobs SET done_count = 1 WHERE id = ANY(%s)", (ids,))
        started = time.perf_counter()
        repairing = reconcile_pass()
        repair_s = time.perf_counter() - started
        repaired = sum(1 for f in repairing.findings if f.action == "repaired")
        assert repaired == n, f"{repaired} of {n} repaired"
    finally:
        _teardown(saved, admin, db_name)
    label = f"{n:,} started jobs" + (" (streams in memory)" if memory else "")
    return [
        {"benchmark": "reconcile_pass", "metric": f"healthy pass, {label}",
         "value": round(healthy_s, 3), "unit": "s", "target": "<= 5 s for 10,000 jobs"},
        {"benchmark": "reconcile_pass", "metric": f"healthy pass rate, {label}",
         "value": round(n / healthy_s), "unit": "jobs/s", "target": "> 200 jobs/s"},
        {"benchmark": "reconcile_pass", "metric": f"first pass, all {label} waiting",
         "value": round(waits[0], 3), "unit": "s", "target": "<= 5 s for 10,000 jobs"},
        {"benchmark": "reconcile_pass", "metric": f"next pass, all {label} still waiting",
         "value": round(max(waits[1:]), 3), "unit": "s", "target": "<= 5 s for 10,000 jobs"},
        {"benchmark": "reconcile_pass", "metric": f"pass repairing every job, {label}",
         "value": round(repair_s, 3), "unit": "s", "target": "< 30 s per 1,000 jobs"},
    ]  # fmt: skip


def main() -> None:
    """Print the rows as a table."""
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile_pass")
    parser.add_argument("--quick", action="store_true", help="1,000 jobs, not 10,000")
    parser.add_argument("--jobs", type=int, help="this many started jobs")
    parser.add_argument("--memory-streams", action="store_true",
                        help="job streams in memory (a server short of open files)")  # fmt: skip
    args = parser.parse_args()
    rows = run(quick=args.quick, jobs=args.jobs, memory=args.memory_streams)
    width = max(len(r["metric"]) for r in rows)
    print(f"{'metric':<{width}}  {'value':>10}  unit    target")
    for r in rows:
        print(f"{r['metric']:<{width}}  {r['value']:>10}  {r['unit']:<6}  {r['target']}")


if __name__ == "__main__":
    main()

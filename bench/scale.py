"""Beyond one machine, measured: stream replicas, PgBouncer, and `jobsys top`'s query.

    python -m bench.scale top          # the top query at 1,000 active jobs
    python -m bench.scale replicas     # job time, replicas 1 vs 3, on a private 3-node cluster
    python -m bench.scale pgbouncer    # through PgBouncer (transaction pooling) vs direct
    python -m bench.scale all

Each uses its own database (bench.env) and, for replicas, its own NATS
cluster; PgBouncer is started on a free port in front of the same Postgres.
Figures are printed as one JSON object per measurement; note `uptime`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import env  # noqa: F401 - isolates the bench before jobsys is used
from bench.env import BENCH_URL, scratch_database, setup, teardown
from devtools.cluster import NatsCluster
from devtools.pgbouncer import PgBouncer
from jobsys.display import host_port
from jobsys.settings import get_settings, reset_settings

ACTIVE_JOBS = 1_000
FINISHED_JOBS = 9_000
FINDINGS_PER_JOB = 5
TOP_RUNS = 200
JOB_TASKS = 20_000
COUNT_BATCHES = 2_000
COUNT_BATCH = 100
COUNT_CLIENTS = 8


def uptime() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def emit(what: str, **figures: Any) -> None:
    print(json.dumps({"bench": what, "load": uptime(), **figures}), flush=True)


@contextmanager
def settings_env(**values: str) -> Iterator[None]:
    """JOBSYS_* settings for this process (and its children) within the block."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    reset_settings()
    _reset_clients()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_settings()
        _reset_clients()


def _reset_clients() -> None:
    from jobsys.nats.bridge import close_bridge
    from jobsys.pg.db import close_pool

    close_pool()
    close_bridge()


# -- top --------------------------------------------------------------------------------


def bench_top() -> None:
    """The one query of a `jobsys top` refresh at 1,000 active jobs (and 9,000 finished)."""
    import psycopg

    from jobsys.pg.migrate import migrate
    from jobsys.pg.queries import Q

    with scratch_database("top") as url:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO jobs (name, pipeline, status, total_count, done_count, failed_count,"
                " max_deliver, started_at, created_at, progress_at)"
                " SELECT 'job ' || g, 'echo', CASE WHEN g <= %s THEN 'started' ELSE 'success' END,"
                " 10000, 5000, 10, 5, now() - interval '10 minutes',"
                " now() - interval '11 minutes', now()"
                " FROM generate_series(1, %s) g",
                (ACTIVE_JOBS, ACTIVE_JOBS + FINISHED_JOBS),
            )
            conn.execute(
                "INSERT INTO job_minutes (job_id, minute, done, failed, lost)"
                " SELECT j.id, date_trunc('minute', now()) - m * interval '1 minute', 300, 2, 0"
                " FROM jobs j CROSS JOIN generate_series(0, 9) m"
            )
            run = conn.execute("INSERT INTO reconcile_runs (trigger) VALUES ('bench') RETURNING id")
            run_id = run.fetchone()[0]  # type: ignore[index]
            conn.execute(
                "INSERT INTO reconcile_findings (run_id, job_id, kind, action, detail)"
                " SELECT %s, j.id, 'waiting', 'none', '{}' FROM jobs j"
                " CROSS JOIN generate_series(1, %s)",
                (run_id, FINDINGS_PER_JOB),
            )
            conn.execute("ANALYZE")
            params = {"limit": None}
            for _ in range(10):
                conn.execute(Q.monitor_active_jobs, params).fetchall()
            times = []
            for _ in range(TOP_RUNS):
                t = time.perf_counter()
                rows = conn.execute(Q.monitor_active_jobs, params).fetchall()
                times.append((time.perf_counter() - t) * 1000)
            assert len(rows) == ACTIVE_JOBS
            limited = []
            for _ in range(TOP_RUNS):
                t = time.perf_counter()
                conn.execute(Q.monitor_active_jobs, {"limit": 200}).fetchall()
                limited.append((time.perf_counter() - t) * 1000)
            plan = conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + Q.monitor_active_jobs, params
            ).fetchone()[0][0]  # type: ignore[index]
    emit(
        "top_query",
        active_jobs=ACTIVE_JOBS,
        finished_jobs=FINISHED_JOBS,
        findings=(ACTIVE_JOBS + FINISHED_JOBS) * FINDINGS_PER_JOB,
        ms_median_all_rows=round(statistics.median(times), 2),
        ms_p95_all_rows=round(sorted(times)[int(TOP_RUNS * 0.95)], 2),
        ms_median_limit_200=round(statistics.median(limited), 2),
        server_ms=round(plan["Execution Time"], 2),
        shared_buffers_hit=plan["Plan"].get("Shared Hit Blocks"),
    )


# -- a job, end to end ---------------------------------------------------------------------


def run_job(tasks: int, env_vars: dict[str, str], processors: int = 1) -> dict[str, Any]:
    """One echo job on a fresh worker + processors; submit-to-final seconds."""
    import jobsys
    from jobsys.api.read import wait_until_final
    from jobsys.ops.runner import LocalSystem

    logs = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    with LocalSystem(workers=1, processors=processors, concurrency=8, log_dir=logs, env=env_vars):
        time.sleep(3)  # let the children connect
        items = (json.dumps({"n": i}) for i in range(tasks))
        started = time.monotonic()
        job = jobsys.submit("echo", items, name="bench-scale")
        final = wait_until_final(job.id, timeout=600, poll_s=0.05)
        seconds = time.monotonic() - started
    return {"status": final.status, "seconds": round(seconds, 2),
            "tasks_per_s": round(tasks / seconds)}  # fmt: skip


def bench_replicas(tasks: int) -> None:
    """The same job on the same 3-node cluster with R1 and R3 streams."""
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as root:
        cluster = NatsCluster(Path(root)).start()
        try:
            for replicas in ("1", "3", "1", "3"):
                env_vars = {"JOBSYS_NATS_URL": cluster.url, "JOBSYS_STREAM_REPLICAS": replicas}
                with settings_env(**env_vars):
                    emit("job_on_cluster", replicas=int(replicas), tasks=tasks,
                         **run_job(tasks, env_vars, processors=2))  # fmt: skip
        finally:
            cluster.stop()


# -- PgBouncer ------------------------------------------------------------------------------


def count_rate(url: str) -> float:
    """Result batches recorded per second (the real record_results), from several clients."""
    import threading

    import psycopg
    from psycopg.rows import dict_row

    from jobsys.recording.counting import record_results

    n_jobs = COUNT_CLIENTS
    tasks = COUNT_BATCHES * COUNT_BATCH // n_jobs
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        ids = [
            conn.execute(
                "INSERT INTO jobs (pipeline, status, total_count, max_deliver)"
                " VALUES ('echo', 'started', %s, 5) RETURNING id",
                (tasks * 10,),
            ).fetchone()[0]  # type: ignore[index]
            for _ in range(n_jobs)
        ]
        for job_id in ids:
            conn.execute(
                "INSERT INTO job_tasks (job_id, task_no, payload)"
                " SELECT %s, g, '{}' FROM generate_series(0, %s) g",
                (job_id, tasks - 1),
            )

    def client(job_id: int) -> None:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row,
                             prepare_threshold=None) as c:  # fmt: skip
            for start in range(0, tasks, COUNT_BATCH):
                rows = [(n, "done", "{}", None, 1) for n in range(start, start + COUNT_BATCH)]
                record_results(c, job_id, rows)  # type: ignore[arg-type]

    threads = [threading.Thread(target=client, args=(j,)) for j in ids]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return COUNT_BATCHES / (time.perf_counter() - started)


def bench_pgbouncer(tasks: int) -> None:
    """A job, and the counting path alone, direct and through PgBouncer (transaction mode)."""
    import psycopg

    host, port = host_port(get_settings().database_url, 5432)
    dbname = str(psycopg.conninfo.conninfo_to_dict(BENCH_URL)["dbname"])
    with (
        tempfile.TemporaryDirectory(prefix="bench-pgb-") as root,
        PgBouncer(Path(root), host or "127.0.0.1", port) as bouncer,
    ):
        through = {"JOBSYS_DATABASE_URL": bouncer.url(dbname),
                   "JOBSYS_DB_PREPARED_STATEMENTS": "false"}  # fmt: skip
        direct = {"JOBSYS_DATABASE_URL": BENCH_URL, "JOBSYS_DB_PREPARED_STATEMENTS": "false"}
        for name, env_vars in (("direct", direct), ("pgbouncer", through)) * 2:
            with settings_env(**env_vars):
                emit("job_db_path", path=name, tasks=tasks, **run_job(tasks, env_vars))
        from jobsys.pg.migrate import migrate

        with scratch_database("pgbcount") as url:
            migrate(url)
            via = bouncer.url(str(psycopg.conninfo.conninfo_to_dict(url)["dbname"]))
            for name, target in (("direct", url), ("pgbouncer", via)) * 2:
                emit("record_results", path=name, clients=COUNT_CLIENTS, batch=COUNT_BATCH,
                     batches_per_s=round(count_rate(target)))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("what", choices=["top", "replicas", "pgbouncer", "all"])
    parser.add_argument("--tasks", type=int, default=JOB_TASKS)
    args = parser.parse_args()
    if args.what in ("top", "all"):
        bench_top()
    if args.what in ("replicas", "pgbouncer", "all"):
        setup()
        try:
            if args.what in ("replicas", "all"):
                bench_replicas(args.tasks)
            if args.what in ("pgbouncer", "all"):
                bench_pgbouncer(args.tasks)
        finally:
            teardown()


if __name__ == "__main__":
    main()

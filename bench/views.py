"""Dashboard views on big data, and what their throughput rollup costs the result path.

Builds its own temporary database (created and dropped here), loads 100 jobs
and 1,000,000 ledger rows with COPY, and measures:

* the latency of each dashboard view (`job_overview` must stay under 100 ms);
* result throughput (the real `record_results` query, batches of 100 from
  4 connections) with the per-minute rollup trigger that feeds the rates,
  without it, and with the alternative the migration rejects: an index on
  job_tasks (job_id, finished_at), which makes every ledger update non-HOT.

    python -m bench.views            # full: 1,000,000 tasks
    python -m bench.views --quick    # 100,000 tasks
"""

from __future__ import annotations

import io
import queue
import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from jobsys.pg.migrate import migrate
from jobsys.pg.queries import Q
from jobsys.recording.counting import counting_params
from jobsys.settings import get_settings

BENCH = "views"
JOBS = 100
VIEWS = [
    "job_overview",
    "active_jobs",
    "stuck_jobs",
    "job_throughput",
    "task_failures",
    "reconcile_findings_recent",
]
BATCH = 100
CLIENTS = 4


@contextmanager
def temp_database() -> Iterator[str]:
    """A fresh database with the jobsys schema; dropped on exit."""
    base = get_settings().database_url
    name = f"jobsys_bench_views_{uuid.uuid4().hex[:8]}"
    admin = make_conninfo(base, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(base, dbname=name)
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _copy(conn: psycopg.Connection[Any], sql: str, lines: Iterator[str]) -> None:
    with conn.cursor().copy(sql) as copy:
        buf = io.StringIO()
        for n, line in enumerate(lines, start=1):
            buf.write(line)
            if n % 50_000 == 0:
                copy.write(buf.getvalue())
                buf = io.StringIO()
        copy.write(buf.getvalue())


def load(url: str, tasks: int) -> None:
    """100 jobs (80 finished, 15 started, 5 queued) and `tasks` ledger rows, by COPY."""
    rnd = random.Random(7)
    per_job = tasks // JOBS
    jobs: list[str] = []
    task_lines: list[Iterator[str]] = []

    def job_tasks(job_id: int, n_done: int, n_failed: int) -> Iterator[str]:
        for t in range(per_job):
            if t < n_done:
                yield f'{job_id}\t{t}\t{{"n": {t}}}\tdone\t{{"n": {t}}}\t\\N\t1\tnow\n'
            elif t < n_done + n_failed:
                err = f"error kind {t % 7}: payload rejected"
                yield f'{job_id}\t{t}\t{{"n": {t}}}\tfailed\t\\N\t{err}\t1\tnow\n'
            else:
                yield f'{job_id}\t{t}\t{{"n": {t}}}\tpending\t\\N\t\\N\t0\t\\N\n'

    for job_id in range(1, JOBS + 1):
        failed = per_job // 50 if job_id % 5 == 0 else 0
        if job_id <= 80:
            status, done = "success", per_job - failed
        elif job_id <= 95:
            status, done = "started", rnd.randrange(per_job // 2) if failed == 0 else per_job // 3
        else:
            status, done, failed = "queued", 0, 0
        progress_age = rnd.randrange(1, 600)
        jobs.append(
            f"{job_id}\tjob {job_id}\techo\t{status}\t{per_job}\t{per_job}\t{done}\t{failed}"
            f"\t0\t0\t5\tnow\tnow\t"
            f"{'now' if status == 'success' else chr(92) + 'N'}"
            f"\t{progress_age}\n"
        )
        task_lines.append(job_tasks(job_id, done, failed))

    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(
                "CREATE TEMP TABLE jobs_in (id bigint, name text, pipeline text, status text,"
                " total_count int, published_count int, done_count int, failed_count int,"
                " lost_count int, cancelled_count int, max_deliver int, created_at text,"
                " started_at text, finished_at text, progress_age int)"
            )
            _copy(conn, "COPY jobs_in FROM STDIN", iter(jobs))
            conn.execute(
                "INSERT INTO jobs (id, name, pipeline, status, total_count, published_count,"
                " done_count, failed_count, lost_count, cancelled_count, max_deliver,"
                " created_at, started_at, finished_at, progress_at)"
                " SELECT id, name, pipeline, status, total_count, published_count, done_count,"
                " failed_count, lost_count, cancelled_count, max_deliver,"
                " now() - interval '2 hours', now() - interval '2 hours',"
                " CASE WHEN finished_at = 'now' THEN now() END,"
                " now() - make_interval(secs => progress_age) FROM jobs_in"
            )
            conn.execute("SELECT setval('jobs_id_seq', %s)", (JOBS,))
        for lines in task_lines:
            _copy(
                conn,
                "COPY job_tasks (job_id, task_no, payload, status, result, error, deliveries,"
                " finished_at) FROM STDIN",
                lines,
            )
        # A day of per-minute history for every job, and reconciler findings.
        conn.execute(
            "INSERT INTO job_minutes (job_id, minute, done, failed, lost)"
            " SELECT j, m, 50 + (j * 7 + extract(minute FROM m)::int) %% 100, j %% 3, 0"
            " FROM generate_series(1, %s) j,"
            " generate_series(date_trunc('minute', now()) - interval '1 day',"
            "                 date_trunc('minute', now()), interval '1 minute') m",
            (JOBS,),
        )
        conn.execute(
            "INSERT INTO reconcile_runs (started_at, finished_at, jobs_checked, findings)"
            " SELECT now() - i * interval '1 minute', now() - i * interval '1 minute'"
            " + interval '50 ms', 20, 2 FROM generate_series(1, 1440) i"
        )
        conn.execute(
            "INSERT INTO reconcile_findings (run_id, job_id, at, kind, action)"
            " SELECT r.id, 81 + (r.id % 20), r.started_at, 'idle_lost', 'none'"
            " FROM reconcile_runs r, generate_series(1, 2)"
        )
        conn.execute("VACUUM ANALYZE")


def time_sql(url: str, sql: str, reps: int) -> tuple[float, int]:
    """Median milliseconds of a query (fetching every row), and its row count."""
    times = []
    rows = 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql).fetchall()  # warm-up
        for _ in range(reps):
            start = time.perf_counter()
            rows = len(conn.execute(sql).fetchall())
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), rows


# The rejected alternative's read side: each job's tasks finished in the last
# 5 minutes, counted through an index on job_tasks (job_id, finished_at).
RATE_VIA_INDEX = """
SELECT j.id, (SELECT count(*) FROM job_tasks t
              WHERE t.job_id = j.id AND t.finished_at >= now() - interval '5 minutes') AS n
FROM jobs j
"""


def _new_job(url: str, tasks: int) -> int:
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        row = conn.execute(
            "INSERT INTO jobs (name, pipeline, status, total_count, published_count,"
            " max_deliver, started_at) VALUES ('throughput', 'echo', 'started', %s, %s, 5, now())"
            " RETURNING id",
            (tasks, tasks),
        ).fetchone()
        assert row is not None
        job_id = int(row[0])
        _copy(
            conn,
            "COPY job_tasks (job_id, task_no, payload) FROM STDIN",
            (f'{job_id}\t{t}\t{{"n": {t}}}\n' for t in range(tasks)),
        )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE job_tasks")
    return job_id


def _hot_counts(url: str) -> tuple[int, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'job_tasks'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def result_throughput(url: str, tasks: int) -> tuple[float, float]:
    """Tasks/s through `record_results` (batches of 100, 4 clients) and the HOT update share."""
    job_id = _new_job(url, tasks)
    batches: queue.Queue[list[int]] = queue.Queue()
    for start in range(0, tasks, BATCH):
        batches.put(list(range(start, min(start + BATCH, tasks))))
    upd0, hot0 = _hot_counts(url)
    errors: list[BaseException] = []

    def client() -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                while True:
                    try:
                        nos = batches.get_nowait()
                    except queue.Empty:
                        break
                    # Checked by the caller (no stream sequences recorded here).
                    rows = [(n, "done", '{"ok": true}', None, 1) for n in nos]
                    conn.execute(Q.record_results, counting_params(job_id, rows, [None] * len(nos)))
                conn.execute("SELECT pg_stat_force_next_flush()")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    time.sleep(1.2)  # backends report their table stats at most once a second
    upd1, hot1 = _hot_counts(url)
    hot_share = (hot1 - hot0) / max(upd1 - upd0, 1)
    return tasks / seconds, hot_share


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure the views on 100 jobs / 1M tasks (100k if quick) and the rollup's cost."""
    tasks = 100_000 if quick else 1_000_000
    throughput_tasks = 20_000 if quick else 100_000
    reps = 5 if quick else 20
    rows: list[dict[str, Any]] = []

    def add(metric: str, value: float, unit: str, target: str = "") -> None:
        rows.append(
            {
                "benchmark": BENCH,
                "metric": metric,
                "value": round(value, 2),
                "unit": unit,
                "target": target,
            }
        )

    with temp_database() as url:
        started = time.perf_counter()
        load(url, tasks)
        add(f"load {JOBS} jobs + {tasks:,} tasks (COPY)", time.perf_counter() - started, "s")
        for view in VIEWS:
            ms, n = time_sql(url, f"SELECT * FROM {view}", reps)
            target = "< 100" if view == "job_overview" else ""
            add(f"{view} ({n} rows, {tasks:,} tasks)", ms, "ms", target)

        # Result throughput: the rollup trigger (shipped), no rollup, or an
        # index on finished_at instead. Two rounds, best of each, to damp noise.
        variants: dict[str, list[float]] = {
            "rollup trigger (shipped)": [],
            "no rollup": [],
            "finished_at index": [],
        }
        index_read_ms = 0.0
        hot: dict[str, float] = {}
        with psycopg.connect(url, autocommit=True) as conn:
            for _ in range(2):
                for name, results in variants.items():
                    conn.execute("ALTER TABLE jobs ENABLE TRIGGER jobs_count_minutes")
                    if name != "rollup trigger (shipped)":
                        conn.execute("ALTER TABLE jobs DISABLE TRIGGER jobs_count_minutes")
                    if name == "finished_at index":
                        conn.execute(
                            "CREATE INDEX bench_finished_idx ON job_tasks (job_id, finished_at)"
                        )
                    try:
                        rate, hot[name] = result_throughput(url, throughput_tasks)
                        results.append(rate)
                        if name == "finished_at index":
                            index_read_ms, _ = time_sql(url, RATE_VIA_INDEX, reps)
                    finally:
                        conn.execute("DROP INDEX IF EXISTS bench_finished_idx")
                        conn.execute("ALTER TABLE jobs ENABLE TRIGGER jobs_count_minutes")
        for name, results in variants.items():
            add(f"record_results, {name}", max(results), "tasks/s")
            add(f"HOT ledger updates, {name}", 100 * hot[name], "%")
        add("5-minute rates via the finished_at index (all jobs)", index_read_ms, "ms")
        base = max(variants["no rollup"])
        add(
            "rollup cost on result throughput",
            100 * (1 - max(variants["rollup trigger (shipped)"]) / base),
            "%",
            "small",
        )
        add(
            "finished_at index cost on result throughput",
            100 * (1 - max(variants["finished_at index"]) / base),
            "%",
        )
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["metric"]) for r in rows)
    print(f"{'metric':<{width}}  {'value':>12}  {'unit':<8} target")
    for r in rows:
        print(f"{r['metric']:<{width}}  {r['value']:>12,.2f}  {r['unit']:<8} {r['target']}")


if __name__ == "__main__":
    _print(run(quick="--quick" in sys.argv[1:]))

"""The web console's pages at scale: 1,000 active jobs (and 9,000 finished), and a job of
1,000,000 tasks (100,000 with --quick).

Loads the jobs straight into the bench database (rows, ledger, per-minute
rollup, events), starts a real `jobsys serve` and times each page over HTTP
as a browser gets it (median of REPEATS after a warm-up), and each query
behind them in this process. Target: the page of the 1,000,000-task job
loads in under a second. The failures page reads the job's failed tasks and
the ledger audit every task: their times are shown, without a target.

    python -m bench.console [--quick]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from bench import env  # sets JOBSYS_* before jobsys is imported
from devtools.process import free_port
from jobsys.api.overview import live_jobs, one_job, progress, recent_events, recent_jobs
from jobsys.api.tasks import group_errors
from jobsys.ops.runner import serve_cmd
from jobsys.pg.db import connection
from jobsys.server.tokens import create_token

BENCH = "console"
ACTIVE = 1_000
FINISHED = 9_000
BIG = 1_000_000
BIG_QUICK = 100_000
REPEATS = 5
TARGET_S = 1.0
START_TIMEOUT_S = 60.0
# Five causes of failure among the big job's failed tasks (1 in 100 of those not done).
ERRORS = (
    "decode failed: truncated JPEG",
    "timed out after 30 s",
    "KeyError: 'width'",
    "HTTP 503 from the model server",
    "image larger than 50,000,000 pixels",
)


def load(big: int) -> int:
    """The jobs, straight into the database; returns the big job's id."""
    errors = "ARRAY[" + ", ".join(f"'{e.replace(chr(39), chr(39) * 2)}'" for e in ERRORS) + "]"
    done = big * 2 // 5
    with connection() as conn, conn.transaction():
        conn.execute(
            "INSERT INTO jobs (name, pipeline, status, total_count, published_count, done_count,"
            " failed_count, max_deliver, created_at, started_at, finished_at, progress_at)"
            " SELECT 'job ' || i, 'echo', 'success', 100, 100, 100, 0, 5,"
            " now() - interval '2 days', now() - interval '2 days',"
            " now() - interval '2 days' + interval '1 minute', now() - interval '2 days'"
            " FROM generate_series(1, %(n)s) i",
            {"n": FINISHED},
        )
        conn.execute(
            "INSERT INTO jobs (name, pipeline, status, total_count, published_count, done_count,"
            " failed_count, max_deliver, started_at, progress_at)"
            " SELECT 'active ' || i, 'echo', 'started', 1000, 1000, i %% 1000, i %% 7, 5,"
            " now() - interval '10 minutes', now() FROM generate_series(1, %(n)s) i",
            {"n": ACTIVE},
        )
        conn.execute(
            "INSERT INTO job_minutes (job_id, minute, done, failed, lost)"
            " SELECT j.id, m, 7, 1, 0 FROM jobs j,"
            " generate_series(date_trunc('minute', now()) - interval '2 minutes',"
            "                 date_trunc('minute', now()), interval '1 minute') m"
            " WHERE j.status = 'started'"
        )
        row = conn.execute(
            "INSERT INTO jobs (name, pipeline, status, total_count, published_count, done_count,"
            " failed_count, max_deliver, started_at, progress_at)"
            " VALUES ('the big one', 'echo', 'started', %(n)s, %(n)s, %(done)s, %(failed)s, 5,"
            " now() - interval '1 day', now()) RETURNING id",
            {"n": big, "done": done, "failed": (big - done + 92) // 100},
        ).fetchone()
        assert row is not None
        job_id = int(row["id"])
        conn.execute(
            "INSERT INTO job_tasks (job_id, task_no, payload, status, result, error, deliveries,"
            " finished_at)"
            " SELECT %(job)s, t, json_build_object('n', t, 'path', '/data/img_' || t || '.jpg'),"
            " CASE WHEN t < %(done)s THEN 'done' WHEN t %% 100 = 7 THEN 'failed'"
            " ELSE 'pending' END,"
            " CASE WHEN t < %(done)s THEN json_build_object('n', t, 'label', 'cat') END,"
            f" CASE WHEN t >= %(done)s AND t %% 100 = 7 THEN ({errors})[1 + t %% 5] END,"
            " CASE WHEN t < %(done)s OR t %% 100 = 7 THEN 1 ELSE 0 END,"
            " CASE WHEN t < %(done)s OR t %% 100 = 7 THEN now() END"
            " FROM generate_series(0, %(n)s - 1) t",
            {"job": job_id, "n": big, "done": done},
        )
        conn.execute(
            "UPDATE jobs SET failed_count = (SELECT count(*) FROM job_tasks"
            " WHERE job_id = %(job)s AND status = 'failed') WHERE id = %(job)s",
            {"job": job_id},
        )
        # A day of per-minute history and a long event log.
        conn.execute(
            "INSERT INTO job_minutes (job_id, minute, done, failed, lost)"
            " SELECT %(job)s, m, 270, 4, 0 FROM generate_series(date_trunc('minute', now())"
            " - interval '1 day', date_trunc('minute', now()), interval '1 minute') m"
            " ON CONFLICT (job_id, minute) DO NOTHING",
            {"job": job_id},
        )
        conn.execute(
            "INSERT INTO job_events (job_id, level, event, detail)"
            " SELECT %(job)s, 'info', 'progress', json_build_object('i', i)::jsonb"
            " FROM generate_series(1, 5000) i",
            {"job": job_id},
        )
    with connection() as conn:
        conn.execute("VACUUM ANALYZE")
    return job_id


def timed(call: Callable[[], Any], repeats: int = REPEATS) -> float:
    """Median seconds of `call` (after one warm-up)."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Serve:
    """`jobsys serve` on a free port for the bench."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(serve_cmd(self.port), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("jobsys serve did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measure(big: int) -> dict[str, Any]:
    """Seconds per page (over HTTP) and per query (in process)."""
    started = time.monotonic()
    job_id = load(big)
    loaded_s = time.monotonic() - started
    token, _ = create_token("bench-console", "read")
    since = one_job(job_id).view.started_at  # type: ignore[union-attr]
    assert since is not None
    queries = {
        "jobs list (50 newest)": lambda: recent_jobs(limit=51),
        "jobs list, active only": lambda: recent_jobs("active", limit=51),
        "jobs list, search by name": lambda: recent_jobs(None, "active 99", limit=51),
        f"live snapshot ({ACTIVE:,} active jobs)": lambda: live_jobs(120.0),
        "job row, rate, retries": lambda: one_job(job_id),
        "progress over time (1 day of minutes)": lambda: progress(job_id, since),
        "latest events": lambda: recent_events(job_id, limit=9),
        "failures grouped by error": lambda: group_errors(job_id, ("failed", "lost"), 50),
    }
    query_s = {name: timed(call) for name, call in queries.items()}
    pages = {
        "/jobs": "/jobs",
        "/jobs?status=active": "/jobs?status=active",
        "/jobs?q=active 99": "/jobs?q=active%2099",
        "job page": f"/jobs/{job_id}",
        "job failures page": f"/jobs/{job_id}/failures",
        "job events page": f"/jobs/{job_id}/events",
        "job ledger audit page": f"/jobs/{job_id}/inspect",
        "processors page": "/processors",
    }
    server = Serve()
    try:
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/html"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as client:

            def get(path: str) -> None:
                answer = client.get(path)
                assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])

            page_s = {name: timed(lambda p=path: get(p)) for name, path in pages.items()}
    finally:
        server.stop()
    return {"tasks": big, "job_id": job_id, "load_s": loaded_s, "queries": query_s,
            "pages": page_s, "load_after": os.getloadavg()}  # fmt: skip


def run(quick: bool) -> list[dict[str, Any]]:
    """Rows for bench/run.py."""
    from bench.run import row

    big = BIG_QUICK if quick else BIG
    m = measure(big)
    name = f"console at {ACTIVE:,} active jobs and a {big:,}-task job"
    rows = []
    for page, seconds in m["pages"].items():
        target = f"< {TARGET_S:g} s" if page == "job page" else ""
        ok = seconds < TARGET_S if page == "job page" else None
        rows.append(row(name, f"page {page}", round(seconds * 1000, 1), "ms", target, ok))
    for query, seconds in m["queries"].items():
        rows.append(row(name, f"query {query}", round(seconds * 1000, 1), "ms"))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Standalone: load a scratch bench database, print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.console")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    env.setup()
    try:
        m = measure(BIG_QUICK if args.quick else BIG)
    finally:
        env.teardown()
    print(f"{m['tasks']:,}-task job {m['job_id']} and {ACTIVE:,} active + {FINISHED:,} "
          f"finished jobs loaded in {m['load_s']:.1f} s")  # fmt: skip
    print(f"{'page (HTTP, median of ' + str(REPEATS) + ')':<44} ms")
    for page, seconds in m["pages"].items():
        flag = "" if page != "job page" else ("  (< 1 s: yes)" if seconds < TARGET_S else
                                              "  (< 1 s: NO)")  # fmt: skip
        print(f"  {page:<42} {seconds * 1000:8.1f}{flag}")
    print(f"{'query (in process, median of ' + str(REPEATS) + ')':<44} ms")
    for query, seconds in m["queries"].items():
        print(f"  {query:<42} {seconds * 1000:8.1f}")
    print(f"load average before {load_before}, after {m['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pruning a finished 1,000,000-task job while another job runs at full speed.

A finished job is written directly (bench/export.py) with its finish moved
100 days back. One worker and one processor run echo jobs of `--job` tasks
(default 100,000) three times: without pruning, with `retention.prune_job`
of the big finished job started once the running job is 10% done, and
without again (interleaved, so drift of the shared machine hits both
sides). From the running job's counters, sampled every 0.1 s:

- rate in the prune window: tasks finished per second from the prune's start
  to its end (or the job's end, if sooner); for the runs without pruning,
  over the same span of time from the same point (10% done);
- whole-job rate, submit -> final;
- the prune's own duration and ledger rows deleted per second.

Target: the running job keeps >= 70% of its rate while the prune runs (the
prune takes CPU on a 2-core machine; it must never block the job's writes).

    python -m bench.prune [--quick] [--tasks 1000000] [--job 100000]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

from bench import env  # sets JOBSYS_* before jobsys is imported

PRUNED_TASKS = 1_000_000
QUICK_PRUNED_TASKS = 200_000
JOB_TASKS = 100_000
QUICK_JOB_TASKS = 30_000
# The prune starts when the running job is this far along (warm, steady).
START_AT = 0.1
SAMPLE_S = 0.1
TARGET = 0.7

_AGE = "UPDATE jobs SET finished_at = now() - interval '100 days' WHERE id = %(job_id)s"


def _old_finished_job(n: int) -> int:
    from bench.export import make_finished_job
    from jobsys.pg.db import connection

    job_id = make_finished_job(n, f"bench-prune-{n}")
    with connection() as conn:
        conn.execute(_AGE, {"job_id": job_id})
    return job_id


def _run_job(n: int, tag: str, prune_id: int | None, window_s: float | None) -> dict[str, Any]:
    """One running job; with `prune_id`, prune that job once this one is START_AT done."""
    import jobsys
    from bench.flow import fresh_system
    from jobsys.api.items import counted_items
    from jobsys.lifecycle.retention import prune_job

    samples: list[tuple[float, int]] = []
    pruned: dict[str, Any] = {}

    def prune() -> None:
        t = time.perf_counter()
        assert prune_id is not None
        out = prune_job(prune_id, 0.0)
        pruned.update(start=t, end=time.perf_counter(), rows=out.tasks if out else 0)

    with fresh_system(tag) as system:
        start = time.perf_counter()
        job = jobsys.submit("echo", counted_items(n), name=f"bench-{tag}")
        thread: threading.Thread | None = None
        mark: float | None = None
        while True:
            v = jobsys.get_job(job.id)
            now = time.perf_counter()
            settled = v.done + v.failed + v.lost
            samples.append((now, settled))
            if mark is None and settled >= n * START_AT:
                mark = now
                if prune_id is not None:
                    thread = threading.Thread(target=prune)
                    thread.start()
            if v.status in ("success", "failure", "revoked"):
                break
            time.sleep(SAMPLE_S)
        end = time.perf_counter()
        system.check_alive()
    if thread is not None:
        thread.join()
    assert mark is not None
    if prune_id is not None:
        span = pruned["end"] - mark
    else:
        assert window_s is not None
        span = window_s
    stop = min(mark + span, end)
    at_mark = _done_at(samples, mark)
    at_stop = _done_at(samples, stop)
    return {
        "status": v.status,
        "rate": n / (end - start),
        "window_s": stop - mark,
        "window_rate": (at_stop - at_mark) / (stop - mark) if stop > mark else 0.0,
        "prune_s": (pruned["end"] - pruned["start"]) if pruned else None,
        "prune_rows": pruned.get("rows"),
        "prune_outlasted_job": bool(pruned) and pruned["end"] > end,
    }


def _done_at(samples: list[tuple[float, int]], t: float) -> float:
    """Tasks settled at time `t`, interpolated between samples."""
    prev = samples[0]
    for s in samples:
        if s[0] >= t:
            if s[0] == prev[0]:
                return float(s[1])
            return prev[1] + (s[1] - prev[1]) * (t - prev[0]) / (s[0] - prev[0])
        prev = s
    return float(samples[-1][1])


def measure(pruned_tasks: int, job_tasks: int) -> dict[str, Any]:
    """Baseline, with prune, baseline again; raw figures."""
    out: dict[str, Any] = {"load_before": os.getloadavg()}
    big = _old_finished_job(pruned_tasks)
    with_prune = _run_job(job_tasks, "prune-with", big, None)
    window = with_prune["window_s"]
    # Baselines measured over the same window the prune took (after the same warm-up).
    before = _run_job(job_tasks, "prune-without-1", None, window)
    after = _run_job(job_tasks, "prune-without-2", None, window)
    out.update(pruned_tasks=pruned_tasks, job_tasks=job_tasks, with_prune=with_prune,
               without=[before, after], load_after=os.getloadavg())  # fmt: skip
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    """Rows for bench/run.py."""
    from bench.run import row

    p, j = (QUICK_PRUNED_TASKS, QUICK_JOB_TASKS) if quick else (PRUNED_TASKS, JOB_TASKS)
    m = measure(p, j)
    w = m["with_prune"]
    base = max(m["without"], key=lambda r: r["window_rate"])
    ratio = w["window_rate"] / base["window_rate"] if base["window_rate"] else 0.0
    name = f"prune {p:,}-task job beside a running {j:,}-task job"
    return [
        row(
            name,
            "prune duration",
            w["prune_s"],
            "s",
            f"{w['prune_rows'] / w['prune_s']:,.0f} ledger rows/s",
        ),
        row(
            name,
            "running job, no prune (window)",
            base["window_rate"],
            "tasks/s",
            "best of 2: " + ", ".join(f"{r['window_rate']:,.0f}" for r in m["without"]),
        ),
        row(
            name,
            "running job, during prune",
            w["window_rate"],
            "tasks/s",
            f"window {w['window_s']:.1f}s",
        ),
        row(name, "during / without", ratio, "x", f">= {TARGET}", ratio >= TARGET),
        row(
            name,
            "whole job rate, with / without",
            w["rate"],
            "tasks/s",
            "without: " + ", ".join(f"{r['rate']:,.0f}" for r in m["without"]),
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Standalone: in a scratch bench database; prints the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.prune")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", type=int, default=None, help="tasks of the pruned job")
    parser.add_argument("--job", type=int, default=None, help="tasks of the running job")
    args = parser.parse_args(argv)
    p = args.tasks or (QUICK_PRUNED_TASKS if args.quick else PRUNED_TASKS)
    j = args.job or (QUICK_JOB_TASKS if args.quick else JOB_TASKS)
    env.setup()
    try:
        m = measure(p, j)
    finally:
        env.teardown()
    w = m["with_prune"]
    print(f"pruned {w['prune_rows']:,} ledger rows in {w['prune_s']:.1f}s "
          f"({w['prune_rows'] / w['prune_s']:,.0f} rows/s); outlasted the job: "
          f"{w['prune_outlasted_job']}")  # fmt: skip
    print(f"running {j:,}-task job, rate over the {w['window_s']:.1f}s prune window: "
          f"with prune {w['window_rate']:,.0f}/s; without: "
          + ", ".join(f"{r['window_rate']:,.0f}/s" for r in m["without"]))  # fmt: skip
    print(f"whole-job rate: with prune {w['rate']:,.0f}/s; without: "
          + ", ".join(f"{r['rate']:,.0f}/s" for r in m["without"]))  # fmt: skip
    print(f"load before {m['load_before']}, after {m['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

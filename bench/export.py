"""Export memory: `jobsys results` of a 1,000,000-task job in flat memory.

Finished jobs of a small and a large size are made directly in the bench
database (one INSERT ... SELECT from generate_series: done tasks with a
payload and a result; the job moved to success through `states.transition`).
Then `jobsys results JOB --status all --with-payload --output FILE` runs as a
real subprocess for each, and its peak RSS comes from the kernel
(`os.wait4` -> ru_maxrss), with the wall time and rows/s. Target: the peak
RSS at the large size is at most 1.2x that at the small size (a server-side
cursor: memory does not grow with the job).

    python -m bench.export [--quick] [--sizes 100000,1000000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import env  # sets JOBSYS_* before jobsys is imported
from bench.jobrows import job_row

SIZES = (100_000, 1_000_000)
QUICK_SIZES = (20_000, 200_000)
TARGET_RATIO = 1.2

_FILL = """
INSERT INTO job_tasks (job_id, task_no, payload, status, result, deliveries, finished_at)
SELECT %(job_id)s, g, json_build_object('n', g, 'name', 'item ' || g)::json, 'done',
       json_build_object('n', g, 'digest', md5(g::text))::json, 1, now()
FROM generate_series(0, %(n)s - 1) AS g
"""
_COUNT = """
UPDATE jobs SET total_count = %(n)s, published_count = %(n)s, done_count = %(n)s,
                status = 'started', started_at = now()
WHERE id = %(job_id)s AND status = 'queued'
"""


def make_finished_job(n: int, name: str) -> int:
    """A success job of `n` done tasks, written directly (seconds, not minutes)."""
    from jobsys.lifecycle.states import BY_THRESHOLD as OUTCOME
    from jobsys.lifecycle.states import FINALIZABLE, transition
    from jobsys.pg.db import connection
    from jobsys.pg.queries import Q

    with connection() as conn, conn.transaction():
        row = conn.execute(Q.insert_job, job_row(name, 0, max_deliver=1)).fetchone()
        assert row is not None
        job_id: int = row["id"]
        conn.execute(_FILL, {"job_id": job_id, "n": n})
        conn.execute(_COUNT, {"job_id": job_id, "n": n})
        moved = transition(conn, job_id, OUTCOME, FINALIZABLE, "bench: written directly")
        assert moved is not None and moved.status == "success"
    return job_id


def export_once(job_id: int, out: Path) -> dict[str, Any]:
    """Run `jobsys results` in a subprocess; its wall time and peak RSS."""
    cmd = [sys.executable, "-m", "jobsys.cli", "results", str(job_id), "--status", "all",
           "--with-payload", "--output", str(out)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"export failed: {stderr.strip()}")
    lines = sum(1 for _ in out.open("rb"))
    return {
        "seconds": seconds,
        "rows": lines,
        "rate": lines / seconds,
        "maxrss_mb": usage.ru_maxrss / 1024,
        "bytes": out.stat().st_size,
        "summary": stderr.strip(),
    }


def measure(sizes: tuple[int, ...]) -> dict[str, Any]:
    """Make a job of each size and export it; results by size."""
    out: dict[str, Any] = {"load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="jobsys-export-") as tmp:
        for n in sizes:
            t = time.perf_counter()
            job_id = make_finished_job(n, f"bench-export-{n}")
            made = time.perf_counter() - t
            run = export_once(job_id, Path(tmp) / f"{n}.jsonl")
            assert run["rows"] == n, run
            out[str(n)] = {"job_id": job_id, "make_s": made, **run}
            (Path(tmp) / f"{n}.jsonl").unlink()
    out["load_after"] = os.getloadavg()
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    """Rows for bench/run.py."""
    from bench.run import row

    small, big = QUICK_SIZES if quick else SIZES
    m = measure((small, big))
    lo, hi = m[str(small)], m[str(big)]
    ratio = hi["maxrss_mb"] / lo["maxrss_mb"]
    name = f"export {big:,} tasks (jobsys results)"
    return [
        row(name, f"peak RSS at {small:,} tasks", lo["maxrss_mb"], "MB"),
        row(name, f"peak RSS at {big:,} tasks", hi["maxrss_mb"], "MB"),
        row(name, f"{big:,} / {small:,}", ratio, "x", f"<= {TARGET_RATIO}", ratio <= TARGET_RATIO),
        row(
            name,
            "rows written",
            hi["rate"],
            "rows/s",
            f"{hi['seconds']:.1f}s, {hi['bytes'] / 1e6:,.0f} MB of JSONL with payloads",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Standalone: make the jobs in a scratch bench database, print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.export")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default=None, help="comma-separated task counts")
    args = parser.parse_args(argv)
    sizes = (
        tuple(int(s) for s in args.sizes.split(","))
        if args.sizes
        else (QUICK_SIZES if args.quick else SIZES)
    )
    env.setup()
    try:
        m = measure(sizes)
    finally:
        env.teardown()
    for n in sizes:
        r = m[str(n)]
        print(f"{n:>10,} tasks: made in {r['make_s']:.1f}s; export {r['seconds']:.1f}s "
              f"({r['rate']:,.0f} rows/s), peak RSS {r['maxrss_mb']:.1f} MB")  # fmt: skip
    print(f"load before {m['load_before']}, after {m['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

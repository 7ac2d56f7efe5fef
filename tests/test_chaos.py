"""The chaos suite, short: every fault kind while jobs run, then every invariant.

`make chaos` runs the long version (10 minutes); this one runs in `make test`.
Both run `python -m tests.chaos` in a subprocess: it starts its own NATS,
Redis and Postgres, so restarting them disturbs nothing else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _chaos(seconds: int, jobs: int, tasks: int, seed: int) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSYS_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.chaos",
            "--seconds",
            str(seconds),
            "--jobs",
            str(jobs),
            "--tasks",
            str(tasks),
            "--seed",
            str(seed),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds + 600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"chaos printed no report:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report: dict[str, object] = json.loads(lines[-1])
    assert report["violations"] == [], report
    assert proc.returncode == 0
    return report


def test_short_chaos_run_keeps_every_invariant() -> None:
    report = _chaos(seconds=45, jobs=6, tasks=2000, seed=20261123)
    faults = report["faults"]
    assert isinstance(faults, dict)
    kinds = ("kill_worker", "kill_processor", "restart_nats", "flush_redis", "restart_redis",
             "restart_postgres", "duplicate_results", "stall_postgres")  # fmt: skip
    assert all(faults.get(kind, 0) >= 1 for kind in kinds)
    assert report["lost"] == 0 and report["duplicated"] == 0


@pytest.mark.slow
def test_long_chaos_run_keeps_every_invariant() -> None:
    seed = int(os.environ.get("CHAOS_SEED", "7"))
    report = _chaos(seconds=600, jobs=30, tasks=8_000, seed=seed)
    faults = report["faults"]
    assert isinstance(faults, dict) and all(n >= 3 for n in faults.values())

"""The chaos suite, short: every fault kind while jobs run, then every invariant.

Fault kinds: tests.chaos.faults; the job mix (odd values, poison and hung
tasks, small max_deliver): tests.chaos.mix; the invariants: tests.chaos.check.

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

from tests.chaos import FAULTS, MIX_KINDS


def _chaos(seconds: int, jobs: int, tasks: int, seed: int, min_each: int = 1) -> dict[str, object]:
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
            "--min-each",
            str(min_each),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds * 2 + 600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"chaos printed no report:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report: dict[str, object] = json.loads(lines[-1])
    assert report["violations"] == [], report
    assert report["shortfalls"] == [], report
    assert proc.returncode == 0, proc.stdout[-3000:]
    return report


def _every_kind_at_least(report: dict[str, object], n: int) -> None:
    """Every fault kind injected `n` times; every kind of special task in the mix
    submitted `n` times and, in a job nobody cancelled, seen ending as asked."""
    faults, mix, outcomes = report["faults"], report["mix"], report["outcomes"]
    assert isinstance(faults, dict) and isinstance(mix, dict) and isinstance(outcomes, dict)
    assert {kind: faults.get(kind, 0) for kind in FAULTS if faults.get(kind, 0) < n} == {}
    assert {kind: mix.get(kind, 0) for kind in MIX_KINDS if mix.get(kind, 0) < n} == {}
    assert all(outcomes.get(kind, {}).get("as asked", 0) >= 1 for kind in MIX_KINDS), outcomes


# The harness bounds itself (faults, then at most its settle timeout, then the
# checks) and reports a job that did not settle as a violation; pytest's
# default limit (300 s) could kill it first on a loaded machine, and the
# report saying why would be lost.
@pytest.mark.timeout(900)
def test_short_chaos_run_keeps_every_invariant() -> None:
    # 90 s of faults: every kind comes once first (tests.chaos.faults); the
    # three outages -- workers stopped 25 s, Redis full 20 s, a Postgres stall
    # 15 s -- cannot all overlap, and each starts only if it fits; ~2 min here.
    report = _chaos(seconds=90, jobs=8, tasks=2_500, seed=20261123)
    _every_kind_at_least(report, 1)
    # The mix had jobs of several priorities and weights sharing the processors.
    shares = report["shares"]
    assert sum(1 for key in shares if key.startswith("priority ")) >= 2, shares
    assert sum(1 for key in shares if key.startswith("weight ")) >= 2, shares
    assert report["duplicated"] == 0
    # The remote processor took part: it leased tasks through the gateway and
    # its outcomes were taken (they count like any, exactly once).
    assert report["remote_leased"] and report["remote_reported"], report


@pytest.mark.slow
def test_long_chaos_run_keeps_every_invariant() -> None:
    seed = int(os.environ.get("CHAOS_SEED", "7"))
    report = _chaos(seconds=600, jobs=30, tasks=8_000, seed=seed, min_each=3)
    _every_kind_at_least(report, 3)

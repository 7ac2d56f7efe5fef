"""Hook receivers that misbehave all run long, and the probe jobs that must start anyway.

A share of the chaos jobs name a completion hook on one of the harness's own
receivers (tests/badreceivers.py): one that trickles its body after a 200, one
that trickles its headers, one that never answers, one that answers a huge
body. Every HOOK_EVERY-th job gets one, in turn.

Probe jobs: a small job submitted every PROBE_EVERY_S (and one during each
`redis_full` fault) must start within PROBE_START_S of its submit, not
counting the time outages (workers stopped, Postgres down, Redis full) took
in between. A queued job whose bootstrap message was
lost (Redis flushed, restarted or full) is found by the reconciler after
JOBSYS_QUEUED_STALE_S (10 s here) at its next pass (every 10 s): so the
bound is those plus slack, and it holds whatever the hook receivers do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jobsys
from jobsys.api.items import counted_items
from jobsys.pg.db import connection
from tests.badreceivers import BadReceiver, Mode

# Every this many jobs names a hook on a bad receiver.
HOOK_EVERY = 2
HUGE_BYTES = 64 * 1024 * 1024
# (mode, status) of each receiver, taken in turn.
RECEIVERS: tuple[tuple[Mode, int], ...] = (
    ("trickle", 200), ("trickle_head", 200), ("hang", 200), ("huge", 200), ("huge", 500),
)  # fmt: skip
# How the last attempt of each receiver's hook must have ended.
DEADLINE_ERROR = "no answer within"
PROBE_EVERY_S = 20.0
PROBE_TASKS = 20
PROBE_START_S = 45.0
# A worker's peak RSS may not pass this while huge answers come in (64 MB each).
WORKER_PEAK_RSS_MB = 400


@dataclass
class Probe:
    """A probe job: when it was submitted (wall clock) and why."""

    job_id: int
    submitted_at: float
    during: str


class Receivers:
    """The run's bad receivers (threads of the harness process)."""

    def __init__(self) -> None:
        self.servers = [
            BadReceiver(mode, huge_bytes=HUGE_BYTES, status=status) for mode, status in RECEIVERS
        ]
        self._next = 0

    def __enter__(self) -> Receivers:
        for server in self.servers:
            server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.stop()

    def target_for(self, j: int) -> tuple[str, str] | None:
        """(URL, kind) for the `j`-th job's hook, or None."""
        if j % HOOK_EVERY:
            return None
        server = self.servers[self._next % len(self.servers)]
        self._next += 1
        return server.url, f"{server.mode}:{server.status}"


def submit_probe(during: str) -> Probe:
    """Submit one probe job now."""
    view = jobsys.submit("echo", counted_items(PROBE_TASKS), name=f"probe ({during})")
    return Probe(view.id, time.time(), during)


def check_hooks(hooks: dict[int, str]) -> tuple[list[str], dict[str, int]]:
    """Violations and outcome counts of the hooks of final jobs (`hooks`: job -> kind)."""
    found: list[str] = []
    outcomes: dict[str, int] = {}
    with connection() as conn:
        for job_id, kind in hooks.items():
            row = conn.execute(
                "SELECT h.state, h.attempts, h.last_error, j.status FROM jobs j "
                "LEFT JOIN job_hooks h ON h.job_id = j.id WHERE j.id = %s",
                (job_id,),
            ).fetchone()
            assert row is not None
            state = row["state"] or "missing"
            outcomes[f"{kind} {state}"] = outcomes.get(f"{kind} {state}", 0) + 1
            if state == "missing":
                found.append(f"job {job_id} ({kind}): final without its hook in the outbox")
                continue
            mode = kind.split(":")[0]
            error = row["last_error"] or ""
            if kind in ("trickle:200", "huge:200") and state not in ("delivered", "sending"):
                found.append(f"job {job_id} ({kind}): hook {state} ({error!r}), not delivered")
            tried = bool(row["attempts"]) and state != "sending"
            if mode in ("trickle_head", "hang") and tried and not error.startswith(DEADLINE_ERROR):
                found.append(f"job {job_id} ({kind}): attempt ended {error!r}, not at its deadline")
            short_excerpt = error.startswith("HTTP 500: xxx") and len(error) <= 400
            # A huge answer may also be cut at the attempt's deadline on a
            # loaded machine (seed 728796): given up on time, nothing held.
            cut = error.startswith(DEADLINE_ERROR)
            if kind == "huge:500" and tried and not (short_excerpt or cut):
                found.append(f"job {job_id} ({kind}): error {error[:80]!r}...")
    return found, outcomes


def check_probes(
    probes: list[Probe], outages: list[tuple[str, float, float]]
) -> tuple[list[str], float]:
    """Violations, and the longest wait from when a probe could start to its start."""
    found: list[str] = []
    longest = 0.0
    with connection() as conn:
        for probe in probes:
            row = conn.execute(
                "SELECT started_at FROM jobs WHERE id = %s", (probe.job_id,)
            ).fetchone()
            assert row is not None
            if row["started_at"] is None:
                found.append(f"probe job {probe.job_id} ({probe.during}) never started")
                continue
            started = row["started_at"].timestamp()
            # Time spent in outages (workers stopped, Postgres down, Redis full)
            # between its submit and its start does not count.
            outage = sum(max(0.0, min(end, started) - max(begun, probe.submitted_at))
                         for _kind, begun, end in outages)  # fmt: skip
            waited = started - probe.submitted_at - outage
            longest = max(longest, waited)
            if waited > PROBE_START_S:
                found.append(f"probe job {probe.job_id} ({probe.during}) started {waited:.0f} s "
                             f"after it could (bound {PROBE_START_S:.0f} s)")  # fmt: skip
    return found, longest


def worker_peak_rss_mb(pids: list[int]) -> float:
    """The highest peak RSS (VmHWM) of the given live processes, in MB."""
    peak = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            continue
    return peak


def summary(outcomes: dict[str, int]) -> dict[str, Any]:
    """Hook outcomes for the report."""
    return dict(sorted(outcomes.items()))

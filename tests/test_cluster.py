"""A job on a 3-node JetStream cluster survives the loss of its stream's leader.

The test starts its own cluster (three nats-servers on free ports, routed,
JetStream data on disk), points a worker and two processors at all three
(`JOBSYS_NATS_URL` with three servers) with `JOBSYS_STREAM_REPLICAS=3`, and
SIGKILLs the node leading the job's stream in the middle of the job. The
remaining two elect a new leader; the job must end `success` with counters
equal to the ledger, nothing lost or counted twice, and the reconciler,
running throughout with a short lost-after threshold, must not declare
anything lost during the election. Then the killed node is started again
with its data and rejoins.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import StreamConfig

import jobsys
from devtools.cluster import NatsCluster
from jobsys.api.read import wait_until_final
from jobsys.lifecycle.states import FINAL
from jobsys.nats.admin import all_streams_info
from jobsys.nats.bridge import bridge, close_bridge
from jobsys.nats.connect import connect
from jobsys.nats.subjects import JobNames
from jobsys.ops import doctor
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.pg.queries import Q
from jobsys.reconciler import reconcile_pass
from jobsys.settings import get_settings, reset_settings

# The shared single-server NATS of the test run.
SINGLE_NATS = get_settings().nats_url
TASKS = 6_000
SLEEP_MS = 20  # ~8 s of work on 2 processors x 8 threads
KILL_AT = 0.3  # of the tasks done
# Idle this long and the reconciler may declare pending tasks lost (if NATS
# says nothing is left to deliver): shorter than an election's pause, so a
# reconciler misled by a leaderless stream would show here.
LOST_AFTER_S = "2"
# Watch (and reconcile) at least this long after the kill, and give the
# election this long at most.
WATCH_S = 10.0
ELECTION_TIMEOUT_S = 45.0
# How long a node stays frozen while listings are taken.
FREEZE_S = 12.0


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NatsCluster]:
    """A private 3-node cluster; this process's NATS settings point at it."""
    with NatsCluster(tmp_path / "nats") as nats_cluster:
        monkeypatch.setenv("JOBSYS_NATS_URL", nats_cluster.url)
        monkeypatch.setenv("JOBSYS_STREAM_REPLICAS", "3")
        monkeypatch.setenv("JOBSYS_LOST_AFTER_S", LOST_AFTER_S)
        reset_settings()
        close_bridge()
        try:
            yield nats_cluster
        finally:
            close_bridge()
            monkeypatch.undo()
            reset_settings()


def stream_leader(stream: str) -> str | None:
    """The server name leading `stream`, or None while there is none (election)."""

    async def ask(nc: Any, js: Any) -> str | None:
        info = await nc.jetstream(timeout=0.5).stream_info(stream)
        return info.cluster.leader if info.cluster else None

    try:
        return bridge().run(ask, timeout=2)
    except Exception:
        return None


class Watch:
    """Follows a stream's election and a job's progress after its leader was killed."""

    def __init__(self, stream: str, job_id: int, killed: str, killed_at: float) -> None:
        self.stream, self.job_id, self.killed, self.killed_at = stream, job_id, killed, killed_at
        self.new_leader: str | None = None
        self.elected_at: float | None = None
        self.finished_at: float | None = None
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        while True:
            now = time.monotonic()
            elapsed = now - self.killed_at
            done = self.new_leader is not None or self.finished_at is not None
            if elapsed > ELECTION_TIMEOUT_S or (done and elapsed > WATCH_S):
                return
            self.samples.append((now, progress(self.job_id)))
            if self.finished_at is None and jobsys.get_job(self.job_id).status in FINAL:
                self.finished_at = now
            if self.new_leader is None:
                leader = stream_leader(self.stream)
                if leader not in (None, self.killed):
                    self.new_leader, self.elected_at = leader, time.monotonic()
            time.sleep(0.1)

    def longest_gap(self) -> float:
        """The longest stretch without progress after the kill (until the job finished)."""
        gap, last_t = 0.0, self.killed_at
        last_n = self.samples[0][1] if self.samples else 0
        for t, n in self.samples:
            if n > last_n:
                gap = max(gap, t - last_t)
                last_t, last_n = t, n
        return gap


def progress(job_id: int) -> int:
    view = jobsys.get_job(job_id)
    return view.done + view.failed + view.lost


def test_killing_the_stream_leader_mid_job_loses_and_doubles_nothing(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    env = {
        "JOBSYS_NATS_URL": cluster.url,
        "JOBSYS_STREAM_REPLICAS": "3",
        "JOBSYS_LOST_AFTER_S": LOST_AFTER_S,
    }
    # doctor: three servers carry R3 streams; a single server cannot.
    assert doctor.check_nats(cluster.url, replicas=3).ok
    single = doctor.check_nats(SINGLE_NATS, replicas=3)
    assert not single.ok and single.message.endswith("set JOBSYS_STREAM_REPLICAS=1"), single
    logs = tmp_path / "logs"
    with LocalSystem(workers=1, processors=2, concurrency=8, log_dir=logs, env=env):
        items = (json.dumps({"n": i, "sleep_ms": SLEEP_MS}) for i in range(TASKS))
        job = jobsys.submit("echo", items, name="cluster")
        stream = JobNames.of(get_settings().namespace, job.id).stream

        deadline = time.monotonic() + 120
        while progress(job.id) < TASKS * KILL_AT and time.monotonic() < deadline:
            time.sleep(0.05)
        leader = stream_leader(stream)
        assert leader is not None, "the job's stream has a leader"
        replicas = bridge().run(lambda nc, js: js.stream_info(stream))
        assert replicas.config.num_replicas == 3

        killed_at = time.monotonic()
        cluster.kill_node(cluster.node(leader))
        # A watcher follows the election and the job's progress while this
        # thread runs reconcile passes, as the scheduler would.
        watch = Watch(stream, job.id, leader, killed_at)
        watcher = threading.Thread(target=watch.run, daemon=True)
        watcher.start()
        findings = []
        pass_errors: list[str] = []
        while watcher.is_alive():
            try:
                findings += reconcile_pass(trigger="test").findings
            except Exception as exc:
                # A pass that cannot read NATS stops and acts on nothing;
                # the next one (or the scheduler's) goes on.
                pass_errors.append(repr(exc))
            time.sleep(1.0)
        assert watch.new_leader is not None or watch.finished_at is not None
        cluster.start_node(cluster.node(leader))  # it rejoins with its data

        final = wait_until_final(job.id, timeout=180)
        findings += reconcile_pass(trigger="test").findings

    with connection() as conn:
        ledger = conn.execute(Q.ledger_counts, {"job_id": job.id}).fetchone()
        max_deliveries = conn.execute(
            "SELECT max(deliveries) AS m FROM job_tasks WHERE job_id = %s", (job.id,)
        ).fetchone()
    assert final.status == "success"
    assert (final.done, final.failed, final.lost, final.cancelled) == (TASKS, 0, 0, 0)
    assert ledger is not None
    assert (ledger["done"], ledger["pending"], ledger["lost"]) == (TASKS, 0, 0)
    mine = [f for f in findings if f.job_id == job.id]
    assert not [f for f in mine if f.action == "marked_lost"], mine

    # Figures for the record (no timing assertions): the election as the
    # test saw it, and the longest stretch without progress after the kill.
    report = {
        "killed": leader,
        "new_leader": watch.new_leader,
        "election_s": round(watch.elected_at - killed_at, 2) if watch.elected_at else None,
        "longest_progress_gap_after_kill_s": round(watch.longest_gap(), 2),
        "max_deliveries": max_deliveries["m"] if max_deliveries else None,
        "findings": sorted({f"{f.kind}:{f.action}" for f in mine}),
        "reconcile_passes_failed": pass_errors,
    }
    print("cluster figures:", json.dumps(report))


def test_a_stream_whose_node_does_not_answer_is_never_listed_as_gone(
    cluster: NatsCluster,
) -> None:
    """On a cluster, a stream listing names the streams whose leader did not
    answer in time as `missing`. Processors and the reconciler read absence
    from a listing as deletion, so such a stream must be in the listing (or
    the listing must fail): never silently left out.

    One node is frozen (SIGSTOP: alive, silent) while it leads R1 streams."""

    async def scenario() -> tuple[list[set[str]], set[str]]:
        nc = await connect(cluster.url)
        js = nc.jetstream(timeout=3)
        names = [f"{get_settings().namespace}_frozen_{i}" for i in range(6)]
        for name in names:
            await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.x"], num_replicas=1))
        leaders = {name: (await js.stream_info(name)).cluster.leader for name in names}
        await nc.close()
        frozen = cluster.node(next(iter(leaders.values())))
        on_frozen = {n for n, leader in leaders.items() if leader == frozen.name}
        others = ",".join(n.url for n in cluster.nodes if n is not frozen)
        assert frozen.proc is not None
        frozen.proc.send_signal(signal.SIGSTOP)
        listings: list[set[str]] = []
        try:
            nc = await connect(others)
            js = nc.jetstream(timeout=10)
            deadline = time.monotonic() + FREEZE_S
            while time.monotonic() < deadline:
                try:
                    listing = await all_streams_info(js)
                except Exception:
                    continue  # no answer at all: the caller learns nothing, which is fine
                listings.append({i.config.name or "" for i in listing} & set(names))
            await nc.close()
        finally:
            frozen.proc.send_signal(signal.SIGCONT)
        return listings, on_frozen

    listings, on_frozen = asyncio.run(scenario())
    assert on_frozen, "the frozen node led streams"
    # Listings that answered (if any: failing is fine) must name them all.
    for listing in listings:
        assert on_frozen <= listing, f"streams of the frozen node left out: {on_frozen - listing}"

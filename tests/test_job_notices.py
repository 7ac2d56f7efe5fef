"""Processors hear of their own deployment's jobs by notices, and of no other's.

Issue 20: processors learned of new streams from JetStream's advisories, which
cover every stream of the NATS account (other deployments' too), and from a
listing every 2 s. Now bootstrap, `jobsys set` and teardown say what they did
on the namespace's own subject (`<ns>.jobs.<event>.<stream>`); the listing
stays as a backstop. Here it is set to an hour, so a job that is served and
finishes was heard of by its notice.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import jobsys
from jobsys.api.read import wait_until_final
from jobsys.nats.admin import ensure_job_stream
from jobsys.nats.connect import connect
from jobsys.nats.subjects import JobNames, job_notices
from jobsys.ops.runner import LocalSystem
from jobsys.settings import get_settings
from tests.helpers import Subscriber, assert_counters_match_ledger

FINAL_WITHIN_S = 60  # a liveness bound: without notices the job would wait an hour
HOUR_S = "3600"
JOBS = 5
# A listing's answer is handled well within this (one page of a stream or two).
LISTING_DONE_S = 1.0


class Listener(Subscriber):
    """Every notice of this run's namespace (or every message on `subject`),
    heard on a thread of its own."""

    def __init__(self, subject: str | None = None) -> None:
        self.heard: list[str] = []
        super().__init__(
            {
                subject or job_notices(get_settings().namespace): lambda m: self.heard.append(
                    m.subject
                )
            }
        )

    def wait_for(self, subject: str) -> None:
        deadline = time.monotonic() + FINAL_WITHIN_S
        while subject not in self.heard:
            assert time.monotonic() < deadline, (subject, self.heard)
            time.sleep(0.01)


def test_a_processor_that_lists_once_an_hour_serves_a_new_job_by_its_notice(
    tmp_path: Path,
) -> None:
    env = {"JOBSYS_STREAM_LISTING_S": HOUR_S}
    with Listener() as listener, LocalSystem(log_dir=tmp_path / "logs", env=env):
        # Let the processor's first listing (at its start) pass: a new job
        # can then only be heard of by its notice.
        first = jobsys.submit("echo", [{"i": 0}])
        wait_until_final(first.id, timeout=FINAL_WITHIN_S)
        job = jobsys.submit("echo", [{"i": i} for i in range(50)], rate=20)
        created = JobNames.of(get_settings().namespace, job.id).notice("CREATED")
        listener.wait_for(created)
        jobsys.set_share(job.id, weight=3)  # while it runs (50 tasks at 20/s)
        view = wait_until_final(job.id, timeout=FINAL_WITHIN_S)
    assert view.status == "success" and view.done == 50
    assert_counters_match_ledger(job.id)
    stream = JobNames.of(get_settings().namespace, job.id).stream
    ns = get_settings().namespace
    for event in ("CREATED", "UPDATED", "DELETED"):
        assert f"{ns}.jobs.{event}.{stream}" in listener.heard, (event, listener.heard)


def test_another_namespaces_streams_are_never_heard_of() -> None:
    other = JobNames.of(f"{get_settings().namespace}x", 1)
    settings = get_settings()

    async def make_and_delete() -> None:
        nc = await connect()
        js = nc.jetstream()
        await ensure_job_stream(nc, js, other, {"pipeline": "echo", "max_deliver": 1}, settings)
        await js.delete_stream(other.stream)
        await nc.close()

    with Listener() as listener:
        asyncio.run(make_and_delete())
    assert listener.heard == []


def test_a_processor_serves_new_jobs_without_asking_for_their_stream_or_consumer(
    tmp_path: Path,
) -> None:
    """Issue 20: each new job cost its processor a stream and a consumer request
    before its first pull; the CREATED notice now carries what they said."""
    ns = get_settings().namespace
    env = {"JOBSYS_STREAM_LISTING_S": HOUR_S}
    # Every consumer info request about this namespace's jobs (no reconciler
    # runs here, and the worker never asks for its consumers).
    asked = Listener("$JS.API.CONSUMER.INFO.>")
    listings = Listener("$JS.API.STREAM.LIST")
    with asked, listings, LocalSystem(log_dir=tmp_path / "logs", env=env):
        first = jobsys.submit("echo", [{"i": 0}])
        wait_until_final(first.id, timeout=FINAL_WITHIN_S)
        # Past the processor's first listing (at its start; the next is in an
        # hour), which asks for the consumer of each stream it finds.
        deadline = time.monotonic() + FINAL_WITHIN_S
        while not listings.heard:
            assert time.monotonic() < deadline, "the processor never listed its streams"
            time.sleep(0.05)
        time.sleep(LISTING_DONE_S)
        ids = [jobsys.submit("echo", [{"i": i} for i in range(5)]).id for _ in range(JOBS)]
        views = [wait_until_final(job_id, timeout=FINAL_WITHIN_S) for job_id in ids]
    assert [(v.status, v.done) for v in views] == [("success", 5)] * JOBS
    for job_id in ids:
        assert_counters_match_ledger(job_id)
    # The new jobs' consumers only: the processor's first listing asks for the
    # consumer of every stream it finds (the first job's, and any an earlier
    # test of this run left in the namespace).
    new = {f"$JS.API.CONSUMER.INFO.{ns}_job_{job_id}." for job_id in ids}
    heard = [s for s in asked.heard if any(s.startswith(prefix) for prefix in new)]
    assert heard == [], f"{len(heard)} consumer requests for {JOBS} jobs"

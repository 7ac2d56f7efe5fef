"""Workers and processors you can see: they announce themselves, and a job that cannot
move on says why (`blocked`) in `status`, `watch`, `top`, `doctor` and the reconciler.

Each test runs its processes and commands in a NATS namespace of its own, so
members other tests left behind (a SIGKILLed one stays `alive` until it is
not seen for GONE_AFTER_S) cannot answer for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobsys.ops.runner import LocalSystem
from jobsys.settings import get_settings

REFUSED = "tests.pipelines:odd_values"


@pytest.fixture
def namespace() -> Iterator[str]:
    """A NATS/Redis namespace of the test's own; its bucket and streams removed after."""
    ns = f"{get_settings().namespace}p{uuid.uuid4().hex[:6]}"
    yield ns
    code = (
        "import asyncio, sys\n"
        "from jobsys.nats.admin import delete_streams, namespace_stream\n"
        "from jobsys.nats.connect import connect, jetstream\n"
        "async def wipe():\n"
        "    nc = await connect(); js = jetstream(nc); ns = sys.argv[1]\n"
        "    await delete_streams(js, namespace_stream(ns))\n"
        "    await nc.close()\n"
        "asyncio.run(wipe())\n"
    )  # fmt: skip
    subprocess.run([sys.executable, "-c", code, ns], env=os.environ, timeout=60, check=True)


def cli(namespace: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobsys.cli", *args], capture_output=True, text=True,
        env={**os.environ, "JOBSYS_NAMESPACE": namespace, **env}, timeout=120,
    )  # fmt: skip


def until(what: Callable[[], Any], seconds: float, why: str) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {seconds} s: {why}"
        time.sleep(0.5)


def status(namespace: str, job_id: int) -> dict[str, Any]:
    proc = cli(namespace, "status", str(job_id), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_without_workers_a_job_says_so_and_doctor_fails(namespace: str) -> None:
    created = json.loads(cli(namespace, "submit", "echo", "--count", "3", "--json").stdout)
    assert status(namespace, created["job_id"])["blocked"] == "no worker is running"
    doctor = cli(namespace, "doctor")
    assert doctor.returncode == 1
    assert "FAIL workers: no worker is running" in doctor.stdout, doctor.stdout
    listed = cli(namespace, "processors", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    cli(namespace, "cancel", str(created["job_id"]))


def test_a_pipeline_the_processors_refuse_blocks_the_job_with_their_reason(
    namespace: str, tmp_path: Path
) -> None:
    # Allowed where it is submitted, not on the processor.
    env = {"JOBSYS_NAMESPACE": namespace, "JOBSYS_PIPELINE_MODULES": "",
           "JOBSYS_LOST_AFTER_S": "1"}  # fmt: skip
    with LocalSystem(workers=1, processors=1, concurrency=2, log_dir=tmp_path, env=env) as system:
        created = cli(namespace, "submit", REFUSED, "--count", "4", "--json")
        assert created.returncode == 0, created.stderr
        job_id = json.loads(created.stdout)["job_id"]
        reason = (
            f'pipeline "{REFUSED}" refused by 1 processor: not allowed by JOBSYS_PIPELINE_MODULES'
        )
        until(lambda: status(namespace, job_id)["blocked"] == reason, 60, "blocked says why")

        members = json.loads(cli(namespace, "processors", "--json").stdout)
        assert sorted(m["kind"] for m in members) == ["processor", "worker"]
        processor = next(m for m in members if m["kind"] == "processor")
        assert processor["condition"] == "alive" and processor["pid"] == system.processors[0].pid
        refusal = {"job_id": job_id, "pipeline": REFUSED,
                   "reason": "not allowed by JOBSYS_PIPELINE_MODULES"}  # fmt: skip
        assert processor["refused"] == [refusal]
        assert "echo" in processor["pipelines"] and processor["slots"] == 2
        assert processor["version"] and processor["host"]

        watched = cli(namespace, "watch", str(job_id), "--timeout", "6")
        assert watched.returncode == 1
        assert watched.stderr.strip().splitlines()[-1] == (
            f"jobsys: job {job_id} is still started after 6 s: {reason}"
        )

        def waiting() -> list[tuple[str, str]]:
            found = json.loads(cli(namespace, "reconcile", "--json", **env).stdout)
            mine = [f for f in found["findings"] if f["job_id"] == job_id]
            return [(f["kind"], f["detail"]["reason"]) for f in mine]

        # As `blocked` above, judged from one read of the presence bucket: the
        # same bound (a read in a full suite once saw no member at all).
        until(lambda: waiting() == [("waiting", reason)], 60, "the reconciler says why")

        top = cli(namespace, "top", "--once")
        assert "1 processor (2 slots), 1 worker" in top.stdout and reason in top.stdout, top.stdout
        cli(namespace, "cancel", str(job_id))

    # Stopped gracefully: both say so at once.
    members = json.loads(cli(namespace, "processors", "--json").stdout)
    assert [m["condition"] for m in members] == ["stopped", "stopped"], members
    table = cli(namespace, "processors")
    assert table.returncode == 0 and "stopped" in table.stdout

"""Only allowed pipelines run: built-ins, entry points of installed packages, and
``module:function`` under the module prefixes of JOBSYS_PIPELINE_MODULES.

Attacks: submitting ``subprocess:run``; with NATS access only, a stream named
like a job stream whose description names ``subprocess:run`` (a marker file
proves nothing ran); a completion hook naming an actor outside the allowed
modules (the module is not even imported).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

import jobsys
from jobsys.api.read import wait_until_final
from jobsys.api.retry import retry
from jobsys.errors import InvalidInput
from jobsys.hooks.target import check_target
from jobsys.nats.bridge import bridge
from jobsys.nats.subjects import JobNames, msg_id
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.settings import get_settings, reset_settings
from tests.test_cli import jobsys_cli

ALLOW_HINT = "JOBSYS_PIPELINE_MODULES"
REFUSAL_LOG = "pipeline not allowed: stream not served"


def _job_count() -> int:
    with connection() as conn:
        row = conn.execute("SELECT count(*) AS n FROM jobs").fetchone()
    assert row is not None
    return int(row["n"])


def test_submit_subprocess_run_is_refused_in_one_line_and_creates_nothing(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "touched"
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"touch": 0, str(marker): 0}) + "\n")
    before = _job_count()
    proc = jobsys_cli("submit", "subprocess:run", "--items", str(items))
    assert proc.returncode != 0, proc.stdout
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "'subprocess:run' is not allowed" in proc.stderr and ALLOW_HINT in proc.stderr
    assert _job_count() == before


@pytest.mark.parametrize("name", ["os:system", "testsevil:run", "tests_x.y:run", "builtins:eval"])
def test_a_module_prefix_matches_whole_dotted_components(name: str) -> None:
    with pytest.raises(InvalidInput, match="is not allowed"):
        jobsys.submit(name, ['{"n": 1}'])


def _rogue_stream(job_id: int, marker: Path) -> None:
    """What someone with NATS access only does: a stream named like a job stream of
    the namespace, naming subprocess:run, with a consumer and one task message."""
    names = JobNames.of(get_settings().namespace, job_id)

    async def create(nc: Any, js: Any) -> None:
        await js.add_stream(
            StreamConfig(
                name=names.stream,
                subjects=[names.subject],
                description=json.dumps({"pipeline": "subprocess:run"}),
            )
        )
        await js.add_consumer(
            names.stream,
            ConsumerConfig(
                durable_name=names.consumer,
                ack_policy=AckPolicy.EXPLICIT,
                max_deliver=3,
                filter_subject=names.subject,
            ),
        )
        payload = json.dumps({"touch": 0, str(marker): 0}).encode()
        await js.publish(names.subject, payload, headers={"Nats-Msg-Id": msg_id(job_id, 0)})

    bridge().run(create)


def _delete_stream(job_id: int) -> None:
    names = JobNames.of(get_settings().namespace, job_id)

    async def delete(nc: Any, js: Any) -> None:
        await js.delete_stream(names.stream)

    bridge().run(delete)


def _processor_log(log_dir: Path) -> str:
    return "".join(p.read_text() for p in log_dir.glob("processor-*.log"))


def test_a_rogue_stream_naming_a_disallowed_pipeline_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "touched"
    job_id = 2_000_000_000 + uuid.uuid4().int % 100_000_000  # no such job
    log_dir = tmp_path / "logs"
    try:
        with LocalSystem(workers=0, processors=1, log_dir=log_dir):
            _rogue_stream(job_id, marker)
            deadline = time.monotonic() + 30
            while REFUSAL_LOG not in _processor_log(log_dir) and not marker.exists():
                assert time.monotonic() < deadline, _processor_log(log_dir)
                time.sleep(0.1)
            # A few more stream listings: the refusal is logged once, nothing runs.
            time.sleep(3 * get_settings().stream_listing_s)
            log = _processor_log(log_dir)
    finally:
        _delete_stream(job_id)
    assert not marker.exists(), "the processor ran subprocess:run"
    refusals = [line for line in log.splitlines() if REFUSAL_LOG in line]
    assert len(refusals) == 1, refusals
    assert f"job_id={job_id}" in refusals[0] and "subprocess:run" in refusals[0]


_EP_MODULE = """
def double(payload):
    return {"n": payload["n"], "double": 2 * payload["n"]}
"""


def _entry_point_dist(root: Path, package: str) -> None:
    """An installed distribution (dist-info on a path) declaring one pipeline."""
    (root / package).mkdir()
    (root / package / "__init__.py").write_text("")
    (root / package / "pipes.py").write_text(_EP_MODULE)
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[jobsys.pipelines]\n{package}-double = {package}.pipes:double\n"
    )


def test_a_pipeline_an_installed_package_declares_is_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = f"eppkg{uuid.uuid4().hex[:8]}"
    site = tmp_path / "site"
    site.mkdir()
    _entry_point_dist(site, package)
    monkeypatch.syspath_prepend(str(site))
    # Not under JOBSYS_PIPELINE_MODULES: allowed by its entry-point name only.
    with pytest.raises(InvalidInput, match="is not allowed"):
        jobsys.submit(f"{package}.pipes:double", ['{"n": 1}'])
    job = jobsys.submit(f"{package}-double", [json.dumps({"n": n}) for n in range(5)])
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    with LocalSystem(workers=1, processors=1, log_dir=tmp_path / "logs",
                     env={"PYTHONPATH": pythonpath}):  # fmt: skip
        final = wait_until_final(job.id, timeout=60)
    assert (final.status, final.done) == ("success", 5)
    with connection() as conn:
        row = conn.execute(
            "SELECT result FROM job_tasks WHERE job_id = %s AND task_no = 3", (job.id,)
        ).fetchone()
    assert row is not None and row["result"] == {"n": 3, "double": 6}


_HOOK_MODULE = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")

import dramatiq
from jobsys.broker import setup_broker

setup_broker()


@dramatiq.actor(queue_name="hooks_evil")
def on_done(job):
    pass
"""


def test_a_hook_actor_outside_the_allowed_modules_is_refused_unimported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"hookmod{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(_HOOK_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InvalidInput, match=f"on-complete: '{module}:on_done' is not allowed"):
        check_target(f"{module}:on_done")
    assert not marker.exists(), "the target's module was imported before it was allowed"
    before = _job_count()
    proc = subprocess.run(
        [sys.executable, "-m", "jobsys.cli", "submit", "echo", "--count", "1",
         "--on-complete", f"{module}:on_done"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1, proc.stderr
    assert ALLOW_HINT in proc.stderr
    assert _job_count() == before


def test_a_retry_of_a_job_whose_pipeline_is_no_longer_allowed_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = jobsys.submit("tests.pipelines:odd_values", ['{"n": 1}'])
    assert jobsys.cancel(job.id).status == "revoked"
    before = _job_count()
    monkeypatch.setenv("JOBSYS_PIPELINE_MODULES", "other")
    reset_settings()
    try:
        with pytest.raises(InvalidInput, match=r"'tests\.pipelines:odd_values' is not allowed"):
            retry(job.id, ["cancelled"])
    finally:
        monkeypatch.undo()
        reset_settings()
    assert _job_count() == before

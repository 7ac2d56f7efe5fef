"""Big results go in batches sealed by bytes (JOBSYS_RESULT_BATCH_BYTES), not only
by count: a native processor's batches stay modest Dramatiq messages, and a remote
processor's reports stay within the server's body limit, and one the server
still refuses as too large goes again in halves (an outcome alone over the
limit fails its task).

Before, a batch was sealed at JOBSYS_RESULT_BATCH_SIZE results whatever their
size (250 results of 1 MB: one 250 MB message), and a remote processor
reported up to 1,000 outcomes in one request: past the server's
JOBSYS_SERVE_MAX_BODY_BYTES it was refused (413) again and again, and the job
never finished.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

from devtools.process import free_port
from jobsys.api.read import wait_until_final
from jobsys.api.submit import submit
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.server.tokens import Scope
from tests.serving import Server
from tests.test_gateway import Remote, new_token, wait_final
from tests.test_metrics import value, wait_for

PAD = 100_000
TASKS = 40
BATCH_BYTES = 300_000
# Each result is a little over PAD bytes: a batch holds at most this many.
PER_BATCH = math.ceil(BATCH_BYTES / PAD)
BODY_LIMIT = 1024 * 1024
# A server limit a single result can pass (results may have up to 1,000,000 bytes).
LOW_BODY_LIMIT = 512 * 1024


def _payloads(n: int) -> list[str]:
    return [json.dumps({"n": i, "pad": "x" * PAD}) for i in range(n)]


def _check_results(job_id: int, n: int) -> None:
    with connection() as conn:
        rows = conn.execute(
            "SELECT task_no, result::text AS result FROM job_tasks WHERE job_id = %s",
            (job_id,),
        ).fetchall()
    got = {r["task_no"]: json.loads(r["result"]) for r in rows}
    assert sorted(got) == list(range(n))
    for task, result in got.items():
        assert result == {"n": task, "pad": "x" * PAD}


def test_a_native_processor_seals_batches_of_big_results_by_bytes(tmp_path: Path) -> None:
    port = free_port()
    env = {"JOBSYS_RESULT_BATCH_BYTES": str(BATCH_BYTES)}
    system = LocalSystem(workers=1, processors=1, concurrency=4, log_dir=tmp_path, env=env)
    system.processor_cmd += ["--metrics-port", str(port)]
    with system:
        before = value(wait_for(port), "jobsys_result_batches_sent_total")
        job_id = submit("echo", _payloads(TASKS), name="big-results").id
        view = wait_until_final(job_id, timeout=120)
        assert view.status == "success" and view.done == TASKS, view
        time.sleep(0.5)  # the last confirmation reaches the processor
        sent = value(wait_for(port), "jobsys_result_batches_sent_total") - before
    # Sealed by count alone, 40 results went in a few batches of many.
    assert sent >= math.ceil(TASKS / PER_BATCH), sent
    _check_results(job_id, TASKS)


@contextlib.contextmanager
def remote_deployment(
    tmp_path: Path, body_limit: int, remote_env: dict[str, str] | None = None
) -> Iterator[Remote]:
    """Workers, a `jobsys serve` with this body limit, and a remote processor of `echo`."""
    server_env = {"JOBSYS_SERVE_MAX_BODY_BYTES": str(body_limit),
                  "JOBSYS_SERVE_RATE_LIMIT": "100000/second"}  # fmt: skip
    (tmp_path / "serve").mkdir()
    server = Server(tmp_path / "serve", env=server_env).start()
    token = new_token(Scope.PROCESS, ["echo"])[0]
    try:
        with LocalSystem(workers=1, processors=0, log_dir=tmp_path / "logs"):
            remote = Remote(server.url, token, tmp_path, env=remote_env)
            try:
                yield remote
            finally:
                remote.stop()
    finally:
        server.stop()


def test_a_remote_processors_reports_stay_within_the_servers_body_limit(
    services: str, tmp_path: Path
) -> None:
    env = {"JOBSYS_RESULT_BATCH_BYTES": str(BODY_LIMIT // 2)}
    with remote_deployment(tmp_path, BODY_LIMIT, env) as remote:
        job_id = submit("echo", _payloads(TASKS), name="big-remote-results").id
        job = wait_final(job_id, remote, timeout=120)
        assert (job.status, job.done) == ("success", TASKS), remote.log()[-3000:]
        _check_results(job_id, TASKS)


def test_a_report_over_the_servers_limit_goes_in_halves_and_an_outcome_alone_over_it_fails(
    services: str, tmp_path: Path
) -> None:
    """The remote processor's JOBSYS_RESULT_BATCH_BYTES (4 MiB, its default) is above
    this server's body limit, and one result alone is over it: the reports go in
    halves, that task fails saying why, and every other task is done."""
    big = TASKS // 2
    payloads = _payloads(TASKS)
    payloads[big] = json.dumps({"n": big, "pad": "x" * (LOW_BODY_LIMIT + 1)})
    with remote_deployment(tmp_path, LOW_BODY_LIMIT) as remote:
        job_id = submit("echo", payloads, name="too-large", failure_threshold=0.5).id
        job = wait_final(job_id, remote, timeout=120)
        log = remote.log()
    assert (job.status, job.done, job.failed) == ("success", TASKS - 1, 1), log[-3000:]
    with connection() as conn:
        row = conn.execute(
            "SELECT status, error FROM job_tasks WHERE job_id = %s AND task_no = %s",
            (job_id, big),
        ).fetchone()
    assert row is not None and row["status"] == "failed"
    assert "too large for the server" in row["error"], row
    assert "sending it in halves" in log

"""The task gateway and remote processors, against a real `jobsys serve` on a free port.

A remote processor (`jobsys process --server URL`) started with an
environment that holds no NATS, Redis or Postgres setting runs jobs to their
end with exact counts; wrong or revoked tokens are refused with 401 and
count nothing; a token beyond its scope or pipelines gets 403; a report
naming another task's message, another job's, or a forged handle is refused
alone; a late report counts once; killing the server or a remote processor
mid-job loses nothing and counts nothing twice.

Who serves what, so the tests do not take each other's tasks: the module's
remote processor serves `echo`; no processor serves `sha256` (its tasks are
leased by hand); the kill tests bring their own processors for `echo-batch`
and `fault-echo`. No native processor runs in this module.
"""

from __future__ import annotations

import bisect
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobsys.api.read import get_job, wait_until_final
from jobsys.api.submit import submit
from jobsys.nats.bridge import bridge
from jobsys.nats.presence import members
from jobsys.nats.subjects import JobNames
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.server.tokens import Scope, create_token, fingerprint_of, revoke_token
from jobsys.settings import get_settings
from tests.pipelines import PIPELINE_RETRY_S
from tests.serving import Server

# Short leases, so lapses happen within a test.
LEASE_S = 3
BROKER_SETTINGS = ("JOBSYS_NATS_URL", "JOBSYS_REDIS_URL", "JOBSYS_DATABASE_URL")
FINAL_TIMEOUT_S = 300.0


def new_token(scope: Scope | str, pipelines: list[str] | None = None) -> tuple[str, str]:
    """(token, name) of a fresh token."""
    name = f"g-{scope}-{uuid.uuid4().hex[:8]}"
    token, _ = create_token(name, str(scope), pipelines)
    return token, name


# A rate-limited job through the gateway: its rate and the default burst
# (JOBSYS_RATE_BURST_S 0.25 s of it), and the starts a second may hold beyond
# them (a leased task waits for a free slot before it starts).
STAMP = "tests.pipelines:stamp"
RATED_TASKS = 80
RATE = 20
BURST = 5
START_SLACK = 4
# A job's own --retry-delay base, far above the suite's setting.
JOB_RETRY_S = 4.0
# A pipeline declaring its own retry delay, and a job's own base above it.
DOWN = "tests.pipelines:down_for_a_while"
# A pipeline raising what each payload asks: stored alike by native and remote processors.
FAILS = "tests.pipelines:fails_as_asked"
JOB_OVER_PIPELINE_S = 2 * PIPELINE_RETRY_S[0]


# The adoption test: its job's ack_wait, and extends 1.2 s apart outlasting it.
ADOPT_ACK_WAIT_S = 10.0
ADOPT_EXTENDS = 10
# A server's lease far shorter than a remote processor's first guess (its ack_wait).
SHORT_LEASE_S = 2
LONG_GUESS_S = 30
# How long the adoption tests' lease calls wait for a task that must not come.
PROBE_WAIT_S = 0.2


def _set_ack_wait(job_id: int, seconds: float) -> None:
    """Give the job's consumer another ack_wait (an update of its config)."""
    names = JobNames.of(get_settings().namespace, job_id)

    async def update(nc: Any, js: Any) -> None:
        info = await js.consumer_info(names.stream, names.consumer)
        config = info.config
        config.ack_wait = seconds
        await js.add_consumer(names.stream, config=config)
        updated = await js.consumer_info(names.stream, names.consumer)
        assert updated.config.ack_wait == seconds, updated.config.ack_wait

    bridge().run(update, timeout=30)


def remote_env(token: str) -> dict[str, str]:
    """What a remote processor's machine has: no broker or database setting, no secret."""
    env = {k: v for k, v in os.environ.items() if k not in BROKER_SETTINGS}
    env.pop("JOBSYS_SECRET", None)
    env.pop("JOBSYS_ENV_FILE", None)
    env["JOBSYS_TOKEN"] = token
    return env


class Remote:
    """`jobsys process --server URL` as a child process."""

    def __init__(
        self, url: str, token: str, log_dir: Path, *extra: str, env: dict[str, str] | None = None
    ) -> None:
        self.log_path = log_dir / f"remote-{uuid.uuid4().hex[:6]}.log"
        cwd = log_dir / "remote-cwd"
        cwd.mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", "jobsys.cli", "process", "--server", url,
               "--concurrency", "4", *extra]  # fmt: skip
        repo = Path(__file__).resolve().parent.parent
        env = {**remote_env(token), **(env or {})}
        # The suite's pipelines (tests.pipelines) import from the checkout.
        env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out,
                                         stderr=subprocess.STDOUT)  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def count(sql: str, **params: Any) -> int:
    with connection() as conn:
        row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return int(next(iter(row.values())))


def ledger(job_id: int) -> dict[str, int]:
    """The job's tasks by status, from the ledger."""
    with connection() as conn:
        rows = conn.execute(
            "SELECT status, count(*) AS n FROM job_tasks WHERE job_id = %(j)s GROUP BY status",
            {"j": job_id},
        ).fetchall()
    return {r["status"]: r["n"] for r in rows}


def assert_counters_match_ledger(job_id: int) -> None:
    job = get_job(job_id)
    tasks = ledger(job_id)
    assert (job.done, job.failed, job.lost) == (
        tasks.get("done", 0),
        tasks.get("failed", 0),
        tasks.get("lost", 0),
    )


def wait_final(job_id: int, *alive: Remote, timeout: float = FINAL_TIMEOUT_S) -> Any:
    """The job once final; fails at once if one of `alive` exited meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_job(job_id)
        if job.status in ("success", "failure", "revoked"):
            return job
        for proc in alive:
            assert proc.proc.poll() is None, proc.log()[-3000:]
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} not final: {get_job(job_id)}")


def wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def workers(services: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """Workers only: every task in this module goes through the gateway."""
    with LocalSystem(workers=1, processors=0, log_dir=tmp_path_factory.mktemp("logs")) as system:
        yield system


@pytest.fixture(scope="module")
def server(services: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Failed logins unlimited: the 401 tests make many from one address.
    env = {"JOBSYS_GATEWAY_LEASE_S": str(LEASE_S), "JOBSYS_SERVE_RATE_LIMIT": "100000/second",
           "JOBSYS_SERVE_AUTH_FAILURES": "100000/minute"}  # fmt: skip
    srv = Server(tmp_path_factory.mktemp("serve"), env=env).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def echo_token(services: str) -> tuple[str, str]:
    return new_token(Scope.PROCESS, ["echo"])


@pytest.fixture(scope="module")
def remote(
    server: Server, workers: LocalSystem, echo_token: tuple[str, str], tmp_path_factory: Any
) -> Iterator[Remote]:
    """The module's remote processor: it serves `echo`."""
    proc = Remote(server.url, echo_token[0], tmp_path_factory.mktemp("remote"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def hand_token(services: str) -> str:
    """A token for `sha256`, whose tasks the tests lease by hand."""
    return new_token(Scope.PROCESS, ["sha256"])[0]


def lease(server: Server, token: str, job_id: int, n: int, **body: Any) -> dict[str, Any]:
    answer = server.call(token, "POST", f"/api/gateway/jobs/{job_id}/lease",
                         json={"max_tasks": n, "wait_s": 2, **body})  # fmt: skip
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    return data


def lease_all(server: Server, token: str, job_id: int, n: int) -> list[dict[str, Any]]:
    """Exactly `n` tasks of the job, leased (several calls if need be)."""
    tasks: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while len(tasks) < n:
        assert time.monotonic() < deadline, f"leased {len(tasks)} of {n}"
        tasks += lease(server, token, job_id, n - len(tasks))["tasks"]
    return tasks


def report(server: Server, token: str, job_id: int, items: list[dict[str, Any]]) -> httpx.Response:
    return server.call(token, "POST", f"/api/gateway/jobs/{job_id}/report",
                       json={"results": items})  # fmt: skip


def sha_job(n: int) -> int:
    return submit("sha256", [json.dumps({"data": f"x{i}"}) for i in range(n)]).id


def started(job_id: int) -> None:
    wait_for("the job to start", lambda: get_job(job_id).status == "started")


def test_a_remote_processor_without_broker_settings_runs_2000_tasks_to_success(
    server: Server, remote: Remote, echo_token: tuple[str, str]
) -> None:
    job_id = submit("echo", [json.dumps({"n": i}) for i in range(2000)]).id
    job = wait_final(job_id, remote)
    assert job.status == "success", remote.log()[-3000:]
    assert job.done == 2000 and ledger(job_id) == {"done": 2000}
    assert_counters_match_ledger(job_id)
    # The job's log names the token (by fingerprint) that leased and reported.
    fp = fingerprint_of(echo_token[0])
    for event in ("tasks_leased", "results_reported"):
        assert count(
            "SELECT count(*) FROM job_events WHERE job_id = %(j)s AND event = %(e)s "
            "AND detail->'by'->>'token' = %(fp)s",
            j=job_id, e=event, fp=fp,
        ) > 0, event  # fmt: skip
    assert echo_token[0] not in server.log() + remote.log()


def test_a_remote_processors_failures_keep_their_text_and_traceback(
    server: Server, remote: Remote
) -> None:
    job_id = submit("echo", [json.dumps({"fail": True}) for _ in range(3)],
                    failure_threshold=1.0).id  # fmt: skip
    job = wait_final(job_id, remote)
    assert (job.status, job.failed) == ("success", 3), remote.log()[-3000:]
    with connection() as conn:
        rows = conn.execute(
            "SELECT error, error_type, error_trace FROM job_tasks WHERE job_id = %(j)s",
            {"j": job_id},
        ).fetchall()
    for row in rows:
        # The text a native processor stores, and the traceback beside it.
        assert row["error"] == "payload asked to fail", row
        assert row["error_trace"].startswith("Traceback (most recent call last)"), row
        assert "PermanentError: payload asked to fail" in row["error_trace"], row


def test_a_rate_limited_job_is_leased_no_faster_than_its_rate(
    server: Server, workers: LocalSystem, tmp_path: Path
) -> None:
    # The gateway takes the tokens at lease time from the buckets native
    # processors use; a task starts at most a slot's wait after its lease.
    token, _ = new_token(Scope.PROCESS, [STAMP])
    proc = Remote(server.url, token, tmp_path)
    try:
        items = [json.dumps({"n": i}) for i in range(RATED_TASKS)]
        job_id = submit(STAMP, items, rate=f"{RATE}/s").id
        job = wait_final(job_id, proc)
        assert (job.status, job.done) == ("success", RATED_TASKS), proc.log()[-3000:]
    finally:
        proc.stop()
    with connection() as conn:
        starts = sorted(
            r["result"]["started"]
            for r in conn.execute(
                "SELECT result FROM job_tasks WHERE job_id = %(j)s", {"j": job_id}
            ).fetchall()
        )
    busiest = max(bisect.bisect_left(starts, t + 1.0) - i for i, t in enumerate(starts))
    assert busiest <= RATE + BURST + START_SLACK, f"{busiest} starts in one second"
    assert starts[-1] - starts[0] >= (RATED_TASKS - RATE - BURST) / RATE


def test_a_remote_processor_is_listed_as_remote_with_its_token_name(
    server: Server, remote: Remote, echo_token: tuple[str, str]
) -> None:
    def listed() -> list[Any]:
        return [m for m in members() if m.remote and m.token == echo_token[1]]

    (member,) = wait_for("the remote processor's presence", listed)
    assert member.kind == "processor" and member.state == "running"
    assert member.pid == remote.proc.pid and "echo" in member.pipelines
    out = subprocess.run([sys.executable, "-m", "jobsys.cli", "processors"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert f"remote, token {echo_token[1]}" in out.stdout, out.stdout + out.stderr


def test_wrong_and_revoked_tokens_get_401_and_count_nothing(
    server: Server, workers: LocalSystem, hand_token: str, tmp_path: Path
) -> None:
    job_id = sha_job(3)
    started(job_id)
    token, name = new_token(Scope.PROCESS, ["sha256"])
    (task,) = lease(server, token, job_id, 1)["tasks"]
    revoke_token(name)
    item = {"lease": task["lease"], "status": "done", "result": {"forged": True}}
    for bad in (token, "jst_" + "A" * 43, None):
        for method, path, body in (
            ("POST", f"/api/gateway/jobs/{job_id}/report", {"results": [item]}),
            ("POST", f"/api/gateway/jobs/{job_id}/lease", {"max_tasks": 1}),
            ("POST", "/api/gateway/claim", {}),
            ("POST", "/api/gateway/leases/extend", {"leases": [task["lease"]]}),
        ):
            assert server.call(bad, method, path, json=body).status_code == 401
    time.sleep(1)
    assert get_job(job_id).done == 0 and ledger(job_id) == {"pending": 3}
    # A remote processor with a revoked token stops at once, saying why in its log.
    proc = Remote(server.url, token, tmp_path)
    assert proc.proc.wait(120) == 1
    assert "refused" in proc.log() and token not in proc.log()


def test_a_token_beyond_its_scope_or_pipelines_gets_403(
    server: Server, workers: LocalSystem, hand_token: str, echo_token: tuple[str, str]
) -> None:
    job_id = sha_job(2)
    started(job_id)
    before = get_job(job_id)
    read_token, _ = new_token(Scope.READ)
    admin_token, _ = new_token(Scope.ADMIN)
    for token in (read_token, admin_token):
        answer = server.call(token, "POST", f"/api/gateway/jobs/{job_id}/lease",
                             json={"max_tasks": 1})  # fmt: skip
        assert answer.status_code == 403, answer.text
    # A process token may not touch a job of a pipeline it does not name.
    other = echo_token[0]
    answer = server.call(other, "POST", f"/api/gateway/jobs/{job_id}/lease", json={})
    assert answer.status_code == 403 and "does not reach" in answer.json()["detail"]
    assert report(server, other, job_id, []).status_code == 403
    answer = server.call(other, "POST", "/api/gateway/claim", json={"pipelines": ["sha256"]})
    assert answer.status_code == 403
    # ...and a process token may not use the jobs API.
    assert server.call(hand_token, "GET", f"/api/jobs/{job_id}").status_code == 403
    after = get_job(job_id)
    assert (after.done, after.failed) == (before.done, before.failed)
    claimed = server.call(hand_token, "POST", "/api/gateway/claim", json={}).json()
    assert job_id in [j["job_id"] for j in claimed["jobs"]]


def test_a_report_for_another_tasks_message_is_refused_alone_and_that_task_unaffected(
    server: Server, workers: LocalSystem, hand_token: str
) -> None:
    job_id, other_job = sha_job(3), sha_job(1)
    started(job_id)
    started(other_job)
    a, b, c = sorted(lease_all(server, hand_token, job_id, 3), key=lambda t: t["task"])
    (foreign,) = lease_all(server, hand_token, other_job, 1)
    # b's handle with a's task number, a handle edited to name a's message,
    # another job's handle, a made-up one; and b's own report, which counts.
    body, mac = b["lease"].rsplit(".", 1)
    edited = body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + mac
    items = [
        {"lease": b["lease"], "task": a["task"], "status": "done", "result": {"forged": 1}},
        {"lease": edited, "status": "done", "result": {"forged": 2}},
        {"lease": foreign["lease"], "status": "done", "result": {"forged": 3}},
        {"lease": "bm90LWEtaGFuZGxl.AAAAAAAAAAAAAAAAAAAAAA", "status": "done", "result": {}},
        {"lease": b["lease"], "task": b["task"], "status": "done", "result": {"b": True}},
        {"lease": c["lease"], "status": "bogus"},
    ]
    answer = report(server, hand_token, job_id, items)
    assert answer.status_code == 200, answer.text
    refused = {r["index"]: r["error"] for r in answer.json()["refused"]}
    assert sorted(refused) == [0, 1, 2, 3, 5], refused
    assert "not of task" in refused[0] and "forged or altered" in refused[1]
    assert f"of job {other_job}" in refused[2]
    assert answer.json()["accepted"] == 1
    wait_for("b counted", lambda: get_job(job_id).done == 1)
    time.sleep(1)
    assert ledger(job_id) == {"done": 1, "pending": 2}
    assert ledger(other_job) == {"pending": 1}
    with connection() as conn:
        row = conn.execute(
            "SELECT status, result FROM job_tasks WHERE job_id = %(j)s AND task_no = %(t)s",
            {"j": job_id, "t": a["task"]},
        ).fetchone()
    assert row is not None and row["status"] == "pending" and row["result"] is None
    # The real reports count; a repeat counts nothing more; the job ends.
    ok = [{"lease": t["lease"], "status": "done", "result": {"t": t["task"]}} for t in (a, b, c)]
    assert report(server, hand_token, job_id, ok).json()["accepted"] == 3
    assert wait_until_final(job_id, timeout=120).status == "success"
    assert ledger(job_id) == {"done": 3} and get_job(job_id).done == 3
    report(server, hand_token, other_job, [{"lease": foreign["lease"], "status": "done",
                                           "result": {}}])  # fmt: skip
    assert wait_until_final(other_job, timeout=120).status == "success"


def test_a_lapsed_lease_hands_its_task_back_and_a_late_report_counts_once(
    server: Server, workers: LocalSystem, hand_token: str
) -> None:
    job_id = sha_job(1)
    started(job_id)
    (first,) = lease_all(server, hand_token, job_id, 1)
    # Extended, it lives on past its lease time...
    for _ in range(3):
        time.sleep(LEASE_S / 2)
        answer = server.call(hand_token, "POST", "/api/gateway/leases/extend",
                             json={"leases": [first["lease"]]})  # fmt: skip
        assert answer.json()["extended"] == 1, answer.text
    # ...and lapses without: the task is handed back and leased again.
    time.sleep(LEASE_S + 1)
    (second,) = lease_all(server, hand_token, job_id, 1)
    assert second["task"] == first["task"] and second["deliveries"] > first["deliveries"]
    answer = server.call(hand_token, "POST", "/api/gateway/leases/extend",
                         json={"leases": [first["lease"]]})  # fmt: skip
    assert answer.json()["unknown"] == 1
    late = {"lease": first["lease"], "status": "done", "result": {"late": True}}
    assert report(server, hand_token, job_id, [late]).json()["accepted"] == 1
    assert wait_until_final(job_id, timeout=120).status == "success"
    again = {"lease": second["lease"], "status": "done", "result": {"late": False}}
    assert report(server, hand_token, job_id, [again]).json()["accepted"] == 1
    time.sleep(2)
    job = get_job(job_id)
    assert (job.done, ledger(job_id)) == (1, {"done": 1})


def test_transient_failures_are_retried_and_permanent_ones_fail_with_type_and_traceback(
    server: Server, workers: LocalSystem, hand_token: str
) -> None:
    job_id = submit("sha256", [json.dumps({"data": "t"}), json.dumps({"data": "p"})],
                    max_deliver=2, failure_threshold=1.0).id  # fmt: skip
    started(job_id)
    t, p = sorted(lease_all(server, hand_token, job_id, 2), key=lambda x: x["task"])
    items = [
        {"lease": t["lease"], "status": "failed", "transient": True, "error": "flaky",
         "error_type": "TimeoutError"},
        {"lease": p["lease"], "status": "failed", "error": "bad input",
         "error_type": "ValueError", "traceback": "Traceback (most recent call last):\n  x"},
    ]  # fmt: skip
    answer = report(server, hand_token, job_id, items).json()
    assert (answer["accepted"], answer["retried"], answer["refused"]) == (1, 1, [])
    # The transient one comes back (delivery 2, the job's last)...
    (t2,) = lease_all(server, hand_token, job_id, 1)
    assert t2["task"] == t["task"] and t2["deliveries"] == 2
    # ...where a transient failure fails it, whatever the processor says.
    items = [{"lease": t2["lease"], "status": "failed", "transient": True, "error": "flaky",
              "error_type": "TimeoutError"}]  # fmt: skip
    assert report(server, hand_token, job_id, items).json()["accepted"] == 1
    job = wait_until_final(job_id, timeout=120)
    assert (job.status, job.failed) == ("success", 2)
    with connection() as conn:
        rows = {
            r["task_no"]: r
            for r in conn.execute(
                "SELECT task_no, error, error_type, error_trace FROM job_tasks"
                " WHERE job_id = %(j)s",
                {"j": job_id},
            ).fetchall()
        }
    # Stored as a native processor's: the error one line, its type and
    # traceback beside it.
    assert rows[p["task"]]["error"] == "ValueError: bad input"
    assert rows[p["task"]]["error_type"] == "ValueError"
    assert rows[p["task"]]["error_trace"].startswith("Traceback (most recent call last)")
    assert rows[t["task"]]["error"] == "gave up after 2 deliveries: TimeoutError: flaky"


def test_a_transient_failure_comes_back_after_the_jobs_own_retry_delay(
    server: Server, workers: LocalSystem, hand_token: str
) -> None:
    job_id = submit("sha256", [json.dumps({"data": "r"})], retry_delay=(JOB_RETRY_S, 60)).id
    started(job_id)
    (t,) = lease_all(server, hand_token, job_id, 1)
    failed = {"lease": t["lease"], "status": "failed", "transient": True, "error": "flaky"}
    assert report(server, hand_token, job_id, [failed]).json()["retried"] == 1
    reported = time.monotonic()
    # Not before the job's delay (the suite's JOBSYS_RETRY_DELAY_S is 0.2 s)...
    while time.monotonic() - reported < JOB_RETRY_S - 1:
        assert lease(server, hand_token, job_id, 1, wait_s=0.5)["tasks"] == [], (
            f"back after {time.monotonic() - reported:.1f} s"
        )
    # ...and back after it, its second delivery.
    (again,) = lease_all(server, hand_token, job_id, 1)
    assert again["task"] == t["task"] and again["deliveries"] == 2
    ok = {"lease": again["lease"], "status": "done", "result": {"ok": True}}
    assert report(server, hand_token, job_id, [ok]).json()["accepted"] == 1


def test_a_remote_failure_waits_the_pipelines_retry_delay_unless_the_job_has_its_own(
    server: Server, workers: LocalSystem, tmp_path: Path
) -> None:
    # As on a native processor: the job's own --retry-delay, else the pipeline's
    # (`@pipeline(retry_delay=...)`, which only the remote processor knows), else
    # the settings' (the suite's JOBSYS_RETRY_DELAY_S is 0.2 s).
    token, _ = new_token(Scope.PROCESS, [DOWN])
    proc = Remote(server.url, token, tmp_path)
    try:
        logs = {"pipeline": tmp_path / "pipeline.log", "job": tmp_path / "job.log"}
        by_pipeline = submit(DOWN, [json.dumps({"log": str(logs["pipeline"])})]).id
        by_job = submit(DOWN, [json.dumps({"log": str(logs["job"])})],
                        retry_delay=(JOB_OVER_PIPELINE_S, 60)).id  # fmt: skip
        for job_id in (by_pipeline, by_job):
            job = wait_final(job_id, proc)
            assert (job.status, job.done) == ("success", 1), proc.log()[-3000:]
    finally:
        proc.stop()
    gaps = {}
    for which, log in logs.items():
        first, second = (float(t) for t in log.read_text().split())
        gaps[which] = second - first
    assert gaps["pipeline"] >= PIPELINE_RETRY_S[0], gaps
    assert gaps["job"] >= JOB_OVER_PIPELINE_S, gaps


def _failures(job_id: int) -> dict[str, tuple[str, str | None, str]]:
    """Each task's stored failure by what it raised: (error, error_type, the traceback's
    last line)."""
    with connection() as conn:
        rows = conn.execute(
            "SELECT payload->>'raise' AS kind, error, error_type, error_trace FROM job_tasks"
            " WHERE job_id = %(j)s",
            {"j": job_id},
        ).fetchall()
    return {
        r["kind"]: (r["error"], r["error_type"], (r["error_trace"] or "").strip().splitlines()[-1])
        for r in rows
    }


def test_a_remote_failure_is_stored_as_a_native_processors_for_the_same_exception(
    server: Server, workers: LocalSystem, tmp_path: Path
) -> None:
    items = [json.dumps({"raise": k}) for k in ("permanent", "value", "own", "transient")]
    # The native side first, alone (its processor would serve the remote's job too).
    with LocalSystem(workers=0, processors=1, log_dir=tmp_path):
        native = submit(FAILS, items, max_deliver=1, failure_threshold=1.0).id
        assert wait_final(native).failed == len(items)
    token, _ = new_token(Scope.PROCESS, [FAILS])
    proc = Remote(server.url, token, tmp_path)
    try:
        remote = submit(FAILS, items, max_deliver=1, failure_threshold=1.0).id
        assert wait_final(remote, proc).failed == len(items), proc.log()[-3000:]
    finally:
        proc.stop()
    assert _failures(remote) == _failures(native)
    assert _failures(native) == {
        "permanent": ("no such record", "jobsys.errors.PermanentError",
                      "jobsys.errors.PermanentError: no such record"),
        "value": ("ValueError: bad value 'x'", "ValueError", "ValueError: bad value 'x'"),
        "own": ("BadRecord: record 7 is short", "tests.pipelines.BadRecord",
                "tests.pipelines.BadRecord: record 7 is short"),
        "transient": ("gave up after 1 deliveries: ConnectionError: service unavailable",
                      "ConnectionError", "ConnectionError: service unavailable"),
    }  # fmt: skip


def test_the_server_killed_mid_job_and_restarted_loses_and_doubles_nothing(
    services: str, workers: LocalSystem, tmp_path: Path
) -> None:
    env = {"JOBSYS_GATEWAY_LEASE_S": str(LEASE_S), "JOBSYS_SERVE_RATE_LIMIT": "100000/second"}
    srv = Server(tmp_path, env=env).start()
    token, _ = new_token(Scope.PROCESS, ["echo-batch"])
    proc = Remote(srv.url, token, tmp_path)
    try:
        job_id = submit("echo-batch", [json.dumps({"n": i, "sleep_ms": 2}) for i in range(1500)]).id
        wait_for("progress", lambda: get_job(job_id).done >= 200, timeout=180)
        assert srv.proc is not None
        srv.proc.kill()
        srv.proc.wait()
        time.sleep(2)
        srv.start()
        job = wait_final(job_id, proc)
        assert job.status == "success", proc.log()[-3000:]
        assert job.done == 1500 and ledger(job_id) == {"done": 1500}
        assert_counters_match_ledger(job_id)
        assert proc.proc.poll() is None, "the remote processor outlived the server's death"
    finally:
        proc.stop()
        srv.stop()


def _adoption(tmp_path: Path, hand_token: str, kill_first: bool) -> None:
    """A task leased through one server process and extended only through another
    (a restart, or --workers 2) for longer than the lease and ack_wait together:
    it is never delivered again, and the report through either counts once."""
    env = {"JOBSYS_GATEWAY_LEASE_S": str(LEASE_S)}
    first, second = Server(tmp_path, env=env).start(), Server(tmp_path, env=env).start()
    try:
        job_id = sha_job(1)
        started(job_id)
        # The suite's 3 s ack_wait is shorter than a keep-alive tick can be late
        # on a loaded machine; this job's consumer gets ADOPT_ACK_WAIT_S, and
        # the lease is extended for longer than that (and LEASE_S) below.
        _set_ack_wait(job_id, ADOPT_ACK_WAIT_S)
        (task,) = lease_all(first, hand_token, job_id, 1)
        assert task["deliveries"] == 1
        assert first.proc is not None

        def extend() -> None:
            answer = second.call(hand_token, "POST", "/api/gateway/leases/extend",
                                 json={"leases": [task["lease"]]})  # fmt: skip
            assert answer.json()["extended"] == 1, answer.text

        extend()
        if kill_first:
            first.proc.kill()
            first.proc.wait()
        for _ in range(ADOPT_EXTENDS):
            extend()
            time.sleep(1.2)
        # Nothing to lease through either (briefly: the lease lives LEASE_S).
        assert lease(second, hand_token, job_id, 1, wait_s=PROBE_WAIT_S)["tasks"] == []
        extend()
        if not kill_first:
            assert lease(first, hand_token, job_id, 1, wait_s=PROBE_WAIT_S)["tasks"] == []
            extend()
        item = {"lease": task["lease"], "status": "done", "result": {"kept": True}}
        assert report(second, hand_token, job_id, [item]).json()["accepted"] == 1
        assert wait_until_final(job_id, timeout=120).status == "success"
        assert ledger(job_id) == {"done": 1}
        with connection() as conn:
            row = conn.execute(
                "SELECT deliveries FROM job_tasks WHERE job_id = %(j)s", {"j": job_id}
            ).fetchone()
        assert row is not None and row["deliveries"] == 1
    finally:
        first.stop()
        second.stop()


def test_a_server_process_adopts_the_leases_of_a_killed_one_so_their_tasks_stay_put(
    services: str, workers: LocalSystem, hand_token: str, tmp_path: Path
) -> None:
    _adoption(tmp_path, hand_token, kill_first=True)


def test_a_lease_extended_only_through_another_live_server_process_stays_put(
    services: str, workers: LocalSystem, hand_token: str, tmp_path: Path
) -> None:
    # Both processes live (`jobsys serve --workers 2`: the kernel hands each
    # request to either). The granting one hears that the other took the lease
    # and lets go of it instead of handing it back when its own copy lapses.
    _adoption(tmp_path, hand_token, kill_first=False)


def test_a_lease_shorter_than_the_processors_first_guess_is_extended_in_time(
    workers: LocalSystem, tmp_path: Path
) -> None:
    # The processor guesses the lease from its own ack_wait until the server's first
    # answer says otherwise; the server's lease here is far shorter than that guess.
    srv = Server(tmp_path, env={"JOBSYS_GATEWAY_LEASE_S": str(SHORT_LEASE_S)}).start()
    token, _ = new_token(Scope.PROCESS, ["fault-echo"])
    proc = Remote(srv.url, token, tmp_path, env={"JOBSYS_ACK_WAIT_S": str(LONG_GUESS_S)})
    try:
        items = [json.dumps({"n": i, "sleep_ms": SHORT_LEASE_S * 2_000}) for i in range(4)]
        job_id = submit("fault-echo", items).id
        job = wait_final(job_id, proc)
        assert job.status == "success", proc.log()[-3000:]
        assert count("SELECT max(deliveries) FROM job_tasks WHERE job_id = %(j)s", j=job_id) == 1
        assert "leases lapsed" not in srv.log()
    finally:
        proc.stop()
        srv.stop()


def test_a_killed_remote_processors_leased_tasks_come_back_after_the_lease_and_run_elsewhere(
    server: Server, workers: LocalSystem, tmp_path: Path
) -> None:
    token, _ = new_token(Scope.PROCESS, ["fault-echo"])
    first = Remote(server.url, token, tmp_path)
    job_id = submit("fault-echo", [json.dumps({"n": i, "sleep_ms": 200}) for i in range(60)]).id
    wait_for("the first processor to lease", lambda: count(
        "SELECT count(*) FROM job_events WHERE job_id = %(j)s AND event = 'tasks_leased'",
        j=job_id))  # fmt: skip
    wait_for("some progress", lambda: get_job(job_id).done >= 1, timeout=120)
    first.kill()
    held = 60 - get_job(job_id).done
    assert held > 0
    second = Remote(server.url, token, tmp_path)
    try:
        job = wait_final(job_id, second)
        assert job.status == "success", second.log()[-3000:]
        assert job.done == 60 and ledger(job_id) == {"done": 60}
        assert "leases lapsed" in server.log()
        processors = {
            e
            for (e,) in _rows(
                "SELECT DISTINCT detail->>'processor' FROM job_events "
                "WHERE job_id = %(j)s AND event = 'tasks_leased'",
                j=job_id,
            )
        }
        assert len(processors) == 2
    finally:
        second.stop()


def _rows(sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with connection() as conn:
        return [tuple(r.values()) for r in conn.execute(sql, params).fetchall()]  # type: ignore[arg-type]

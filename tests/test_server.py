"""`jobsys serve` as a client sees it: a real server process on a free port, real HTTP.

Tokens: no token, a wrong, revoked or expired one -> 401 and nothing done;
every route of the OpenAPI document called with every scope -> 403 and
nothing done when the scope does not grant it, success when it does; a token
limited to pipelines reaches only their jobs. The jobs API does what the CLI
does, through the same library calls, and says it in the same words. Limits
(body sizes, request rates, failed logins), TLS, `jobsys doctor`, and no
token in any log line. The last test checks that every route of the document
was called by some test of this module.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.certs import have_openssl, make_pki
from jobsys.api.cancel import cancel
from jobsys.api.items import counted_items
from jobsys.api.read import get_job, wait_until_final
from jobsys.api.retry import retries_of
from jobsys.api.submit import submit
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.server.tokens import Scope, create_token, fingerprint_of
from tests.serving import CALLED, Server, route_pattern
from tests.test_cli import jobsys_cli

# Every token a test of this module made: none may appear in any log line.
TOKENS: list[str] = []
PROBLEM = "application/problem+json"


def new_token(scope: Scope | str, pipelines: list[str] | None = None, **kw: Any) -> str:
    """A fresh token (remembered for the log check)."""
    if Scope(scope) is Scope.PROCESS and pipelines is None:
        pipelines = ["echo"]
    token, _ = create_token(f"t-{scope}-{uuid.uuid4().hex[:8]}", str(scope), pipelines, **kw)
    TOKENS.append(token)
    return token


@pytest.fixture(scope="module")
def workers(services: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """A worker and a processor, so that jobs submitted over HTTP run to their end."""
    with LocalSystem(workers=1, processors=1, log_dir=tmp_path_factory.mktemp("logs")) as system:
        yield system


@pytest.fixture(scope="module")
def server(services: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`jobsys serve` with the default limits (but failed logins: the tests make many)."""
    env = {"JOBSYS_SERVE_AUTH_FAILURES": "100000/minute"}
    srv = Server(tmp_path_factory.mktemp("serve"), env=env).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tight(services: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`jobsys serve` with small limits: 2 KiB bodies, 4 KiB uploads, 5 requests a minute."""
    env = {
        "JOBSYS_SERVE_MAX_BODY_BYTES": "2048",
        "JOBSYS_SERVE_MAX_UPLOAD_BYTES": "4096",
        "JOBSYS_SERVE_RATE_LIMIT": "5/minute",
    }
    srv = Server(tmp_path_factory.mktemp("tight"), env=env).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tokens(services: str) -> dict[Scope, str]:
    """One token of each scope (the process one for `echo`)."""
    return {scope: new_token(scope) for scope in Scope}


def settled_job(items: list[str], **options: Any) -> int:
    """A job submitted, final, and torn down (so its events no longer change)."""
    job_id = submit("echo", items, **options).id
    assert wait_until_final(job_id, timeout=180).status == "success"
    deadline = time.monotonic() + 60
    while not count(
        "SELECT count(*) FROM job_events WHERE job_id = %(j)s AND event = 'stream_deleted'",
        j=job_id,
    ):
        assert time.monotonic() < deadline, "no teardown"
        time.sleep(0.2)
    return job_id


@pytest.fixture(scope="module")
def finished(workers: LocalSystem) -> int:
    """A final job with failed tasks (to retry, list by error, export)."""
    items = [json.dumps({"n": i, "fail": i % 4 == 0}) for i in range(40)]
    return settled_job(items, failure_threshold=1.0)


@pytest.fixture(scope="module")
def document(server: Server, tokens: dict[Scope, str]) -> dict[str, Any]:
    """The server's OpenAPI document."""
    answer = server.call(tokens[Scope.READ], "GET", "/openapi.json")
    assert answer.status_code == 200, answer.text
    doc: dict[str, Any] = answer.json()
    return doc


def operations(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(METHOD, path template, scope) of every operation of the document."""
    return [
        (method.upper(), path, op["x-jobsys-scope"])
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    ]


def count(sql: str, **params: Any) -> int:
    with connection() as conn:
        row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return int(next(iter(row.values())))


def footprint(job_id: int) -> tuple[int, ...]:
    """What a refused call must not change: jobs, the job's events and its retries, tokens."""
    return (
        count("SELECT count(*) FROM jobs"),
        count("SELECT count(*) FROM job_events WHERE job_id = %(j)s", j=job_id),
        count("SELECT count(*) FROM jobs WHERE parent_id = %(j)s", j=job_id),
        count("SELECT count(*) FROM api_tokens WHERE revoked_at IS NULL"),
        count("SELECT count(*) FROM api_tokens"),
    )


def assert_problem(answer: httpx.Response, status: int, text: str = "") -> dict[str, Any]:
    """`answer` is a problem of `status` whose detail holds `text`."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = answer.json()
    assert body["status"] == status and body["type"].startswith("urn:jobsys:problem:")
    assert text in body["detail"], body
    assert "\n" not in body["detail"]
    return body


# Jobs made to stay active (cancelled at the end of the module).
ACTIVE_JOBS: list[int] = []
# The rate that keeps such a job's second task waiting past the module's end.
CRAWL_RATE = "1/h"


def active_job() -> int:
    """A job that stays started: its second task waits for CRAWL_RATE."""
    job_id = submit("echo", counted_items(2), rate=CRAWL_RATE).id
    ACTIVE_JOBS.append(job_id)
    return job_id


@pytest.fixture(scope="module", autouse=True)
def _cancel_active_jobs(services: str) -> Iterator[None]:
    yield
    for job_id in ACTIVE_JOBS:
        cancel(job_id)


# What each scope may call, as the README documents it (not read from the code under test).
MAY_CALL = {
    Scope.READ: {"read"},
    Scope.SUBMIT: {"read", "submit"},
    Scope.ADMIN: {"read", "submit", "admin"},
    Scope.PROCESS: {"process"},
}

# How to call each route with arguments that make it succeed for a token that may.
Request = tuple[str, dict[str, Any]]
REQUESTS: dict[tuple[str, str], Callable[[int], Request]] = {
    ("GET", "/healthz"): lambda job: ("/healthz", {}),
    ("GET", "/openapi.json"): lambda job: ("/openapi.json", {}),
    ("GET", "/api/jobs"): lambda job: ("/api/jobs", {"params": {"limit": 5}}),
    ("POST", "/api/jobs"): lambda job: (
        "/api/jobs",
        {"json": {"pipeline": "echo", "items": [{"n": 1}], "name": "matrix"}},
    ),
    ("GET", "/api/jobs/{job_id}"): lambda job: (f"/api/jobs/{job}", {}),
    ("POST", "/api/jobs/{job_id}/cancel"): lambda job: (f"/api/jobs/{job}/cancel", {}),
    # On an active job of its own (a final job's share cannot change): one that
    # stays active, as a 1-task job no longer does until the call comes.
    ("POST", "/api/jobs/{job_id}/share"): lambda job: (
        f"/api/jobs/{active_job()}/share",
        {"json": {"priority": 1, "weight": 2}},
    ),
    ("POST", "/api/jobs/{job_id}/retry"): lambda job: (
        f"/api/jobs/{job}/retry",
        {"json": {"status": ["failed"]}},
    ),
    ("GET", "/api/jobs/{job_id}/tasks"): lambda job: (
        f"/api/jobs/{job}/tasks",
        {"params": {"by_error": "true"}},
    ),
    ("GET", "/api/jobs/{job_id}/events"): lambda job: (f"/api/jobs/{job}/events", {}),
    ("GET", "/api/jobs/{job_id}/results"): lambda job: (f"/api/jobs/{job}/results", {}),
    ("GET", "/api/token"): lambda job: ("/api/token", {}),
    ("GET", "/api/tokens"): lambda job: ("/api/tokens", {}),
    ("POST", "/api/tokens"): lambda job: (
        "/api/tokens",
        {"json": {"name": f"made-{uuid.uuid4().hex[:8]}", "scope": "read"}},
    ),
    # Revokes a token made for the purpose just before the call.
    ("DELETE", "/api/tokens/{name}"): lambda job: ("/api/tokens/{name}", {}),
    # The task gateway (tests/test_gateway.py runs jobs through it); `job` is final.
    ("POST", "/api/gateway/claim"): lambda job: ("/api/gateway/claim", {"json": {}}),
    ("POST", "/api/gateway/jobs/{job_id}/lease"): lambda job: (
        f"/api/gateway/jobs/{job}/lease",
        {"json": {"max_tasks": 5, "wait_s": 0}},
    ),
    ("POST", "/api/gateway/leases/extend"): lambda job: (
        "/api/gateway/leases/extend",
        {"json": {"leases": []}},
    ),
    ("POST", "/api/gateway/jobs/{job_id}/report"): lambda job: (
        f"/api/gateway/jobs/{job}/report",
        {"json": {"results": []}},
    ),
    ("POST", "/api/gateway/announce"): lambda job: (
        "/api/gateway/announce",
        {
            "json": {
                "id": "matrix",
                "host": "h",
                "pid": 1,
                "version": "0",
                "started_at": "2026-01-01T00:00:00Z",
            }
        },
    ),
}


def test_healthz_answers_without_a_token(server: Server) -> None:
    answer = server.call(None, "GET", "/healthz")
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}
    assert answer.headers["cache-control"] == "no-store"


def test_every_call_without_a_good_token_is_refused_with_401_before_anything_runs(
    server: Server, document: dict[str, Any], finished: int
) -> None:
    unknown = "jst_" + "A" * 43  # the right shape, never issued
    headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": f"Bearer {unknown}"},
    ]
    # The requests are made first: one makes a job of its own to act on.
    requests = [
        (method, *REQUESTS[(method, template)](finished))
        for method, template, scope in [*operations(document), ("GET", "/openapi.json", "any")]
        if scope != "none"
    ]
    before = footprint(finished)
    for method, path, kwargs in requests:
        path = path.replace("{name}", "nobody")
        for header in headers:
            with server.client(**header) as client:
                answer = client.request(method, path, **kwargs)
            assert_problem(answer, 401)
            assert answer.headers["www-authenticate"].startswith("Bearer")
    assert footprint(finished) == before


def test_a_revoked_token_is_refused_at_once_and_does_nothing(
    server: Server, workers: LocalSystem
) -> None:
    token = new_token(Scope.SUBMIT)
    made = server.call(token, "POST", "/api/jobs", json={"pipeline": "echo", "count": 3})
    assert made.status_code == 201, made.text
    job_id = made.json()["job_id"]
    name = server.call(token, "GET", "/api/token").json()["name"]
    revoked = jobsys_cli("token", "revoke", name)
    assert revoked.returncode == 0 and fingerprint_of(token) in revoked.stdout
    before = footprint(job_id)
    answer = server.call(token, "POST", "/api/jobs", json={"pipeline": "echo", "count": 3})
    assert_problem(answer, 401, "revoked")
    assert_problem(server.call(token, "POST", f"/api/jobs/{job_id}/cancel"), 401, "revoked")
    assert_problem(server.call(token, "GET", f"/api/jobs/{job_id}"), 401, "revoked")
    assert footprint(job_id) == before
    assert get_job(job_id).status != "revoked"


def test_an_expired_token_is_refused(server: Server) -> None:
    token = new_token(Scope.READ, expires_days=1)
    assert server.call(token, "GET", "/api/jobs").status_code == 200
    with connection() as conn:
        conn.execute(
            "UPDATE api_tokens SET expires_at = now() - interval '1 second' "
            "WHERE fingerprint = %(fp)s",
            {"fp": fingerprint_of(token)},
        )
    assert_problem(server.call(token, "GET", "/api/jobs"), 401, "expired")


@pytest.mark.parametrize("scope", list(Scope))
def test_every_route_with_every_scope_does_exactly_what_the_scope_grants(
    server: Server, document: dict[str, Any], finished: int, scope: Scope
) -> None:
    token = new_token(scope)
    ops = operations(document)
    assert {(m, t) for m, t, _ in ops} | {("GET", "/openapi.json")} == set(REQUESTS)
    for method, template, needed in ops:
        path, kwargs = REQUESTS[(method, template)](finished)
        if "{name}" in path:
            victim = new_token(Scope.READ)
            path = path.replace("{name}", victim_name(server, victim))
        before = footprint(finished)
        answer = server.call(token, method, path, **kwargs)
        if needed in ("none", "any") or needed in MAY_CALL[scope]:
            assert answer.is_success, (scope, method, template, answer.text)
            if (method, template) == ("POST", "/api/tokens"):
                TOKENS.append(answer.json()["token"])
        else:
            assert_problem(answer, 403, "may not make")
            assert footprint(finished) == before, (scope, method, template)


def victim_name(server: Server, token: str) -> str:
    name: str = server.call(token, "GET", "/api/token").json()["name"]
    return name


def test_a_token_limited_to_pipelines_reaches_only_their_jobs(
    server: Server, workers: LocalSystem
) -> None:
    echo_job = settled_job(list(counted_items(2)))
    token = new_token(Scope.SUBMIT, pipelines=["sha256"])
    before = footprint(echo_job)
    refused = server.call(token, "POST", "/api/jobs", json={"pipeline": "echo", "count": 2})
    assert_problem(refused, 403, "does not reach pipeline 'echo'")
    upload = server.call(
        token,
        "POST",
        "/api/jobs",
        params={"pipeline": "echo"},
        content=b'{"n": 1}\n',
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert_problem(upload, 403, "does not reach")
    for method, path in [
        ("GET", f"/api/jobs/{echo_job}"),
        ("POST", f"/api/jobs/{echo_job}/cancel"),
        ("GET", f"/api/jobs/{echo_job}/results"),
        ("GET", f"/api/jobs/{echo_job}/events"),
    ]:
        assert_problem(server.call(token, method, path), 403, "does not reach")
    assert footprint(echo_job) == before
    mine = server.call(
        token, "POST", "/api/jobs", json={"pipeline": "sha256", "items": [{"data": "abc"}]}
    )
    assert mine.status_code == 201, mine.text
    listed = server.call(token, "GET", "/api/jobs", params={"limit": 1000}).json()
    assert {j["pipeline"] for j in listed} == {"sha256"}
    assert mine.json()["job_id"] in [j["job_id"] for j in listed]


def test_a_job_submitted_over_http_runs_to_success_signed_by_the_token_fingerprint(
    server: Server, workers: LocalSystem
) -> None:
    token = new_token(Scope.SUBMIT)
    items = [{"n": i, "text": "é ✓"} for i in range(300)]
    made = server.call(
        token, "POST", "/api/jobs", json={"pipeline": "echo", "items": items, "name": "over http"}
    )
    assert made.status_code == 201, made.text
    job = made.json()
    assert made.headers["location"] == f"/api/jobs/{job['job_id']}"
    assert job["total"] == 300 and job["name"] == "over http"
    assert wait_until_final(job["job_id"], timeout=180).status == "success"
    status = server.call(token, "GET", f"/api/jobs/{job['job_id']}").json()
    assert status["status"] == "success" and status["done"] == 300 and status["retries"] == []
    events = server.call(token, "GET", f"/api/jobs/{job['job_id']}/events").json()["events"]
    submitted = [e for e in events if e["event"] == "job_submitted"]
    assert submitted[0]["detail"]["by"] == {
        "token": fingerprint_of(token),
        "name": server.call(token, "GET", "/api/token").json()["name"],
    }
    assert token not in json.dumps(events)


def test_results_stream_the_same_bytes_as_jobsys_results(server: Server, finished: int) -> None:
    token = new_token(Scope.READ)
    for fmt in ("jsonl", "csv"):
        for status in ("done", "all"):
            answer = server.call(
                token,
                "GET",
                f"/api/jobs/{finished}/results",
                params={"format": fmt, "status": status, "with_payload": "true"},
            )
            assert answer.status_code == 200, answer.text
            cli = jobsys_cli(
                "results",
                str(finished),
                "--format",
                fmt,
                "--status",
                status,
                "--with-payload",
                check=True,
            )
            assert answer.text == cli.stdout
    done = server.call(token, "GET", f"/api/jobs/{finished}/results")
    assert done.headers["content-type"] == "application/x-ndjson"
    assert done.headers["jobsys-expected"] == "done=30"
    assert len(done.text.splitlines()) == 30
    failed = server.call(
        token, "GET", f"/api/jobs/{finished}/results", params={"status": "failed", "format": "csv"}
    )
    rows = list(csv.DictReader(io.StringIO(failed.text)))
    assert len(rows) == 10 and {r["status"] for r in rows} == {"failed"}
    assert_problem(server.call(token, "GET", "/api/jobs/99999999/results"), 404, "not found")
    assert_problem(
        server.call(token, "GET", f"/api/jobs/{finished}/results", params={"status": "bogus"}),
        422,
        "status: bogus",
    )


def test_tasks_by_error_and_events_are_what_the_cli_prints(server: Server, finished: int) -> None:
    token = new_token(Scope.READ)
    grouped = server.call(
        token, "GET", f"/api/jobs/{finished}/tasks", params={"by_error": "true"}
    ).json()
    cli = json.loads(jobsys_cli("tasks", str(finished), "--by-error", "--json", check=True).stdout)
    assert grouped == cli and grouped["count"] == 10
    listed = server.call(
        token, "GET", f"/api/jobs/{finished}/tasks", params={"status": "failed", "limit": 3}
    ).json()
    assert [t["task"] for t in listed["tasks"]] == [0, 4, 8]
    page = server.call(token, "GET", f"/api/jobs/{finished}/events", params={"limit": 1}).json()
    rest = server.call(
        token, "GET", f"/api/jobs/{finished}/events", params={"after": page["next_after"]}
    ).json()
    logs = [
        json.loads(line)
        for line in jobsys_cli("logs", str(finished), "--json", check=True).stdout.splitlines()
    ]
    assert [e["event"] for e in page["events"] + rest["events"]] == [e["event"] for e in logs]


def test_cancel_and_retry_over_http_name_the_token_in_the_events(
    server: Server, workers: LocalSystem, finished: int
) -> None:
    token = new_token(Scope.SUBMIT)
    actor = {"token": fingerprint_of(token), "name": victim_name(server, token)}
    slow = server.call(
        token, "POST", "/api/jobs", json={"pipeline": "echo", "items": [{"sleep_ms": 200}] * 200}
    ).json()
    not_final = server.call(token, "POST", f"/api/jobs/{slow['job_id']}/retry")
    assert_problem(not_final, 409, "only a final job can be retried")
    cancelled = server.call(token, "POST", f"/api/jobs/{slow['job_id']}/cancel").json()
    assert cancelled == {"job_id": slow["job_id"], "status": "revoked", "changed": True}
    again = server.call(token, "POST", f"/api/jobs/{slow['job_id']}/cancel").json()
    assert again["changed"] is False
    events = server.call(token, "GET", f"/api/jobs/{slow['job_id']}/events").json()["events"]
    assert [e["detail"]["by"] for e in events if e["event"] == "cancel_requested"] == [actor]
    made = server.call(
        token,
        "POST",
        f"/api/jobs/{finished}/retry",
        json={"status": ["failed"], "error_like": "asked"},
    )
    assert made.status_code == 201, made.text
    child = made.json()
    assert child["parent_id"] == finished and child["retried"] == {"failed": 10}
    assert child["job_id"] in retries_of(finished)
    child_events = server.call(token, "GET", f"/api/jobs/{child['job_id']}/events").json()
    assert child_events["events"][0]["detail"]["by"] == actor
    assert_problem(
        server.call(token, "POST", "/api/jobs/99999999/cancel"), 404, "job 99999999 not found"
    )


def test_priority_and_weight_over_http_are_checked_shown_and_changed(
    server: Server, finished: int
) -> None:
    token = new_token(Scope.SUBMIT)
    made = server.call(
        token, "POST", "/api/jobs",
        json={"pipeline": "echo", "items": [{"sleep_ms": 200}] * 200, "priority": -3, "weight": 7},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    job_id = made.json()["job_id"]
    shown = server.call(token, "GET", f"/api/jobs/{job_id}").json()
    assert (shown["priority"], shown["weight"]) == (-3, 7)
    before = count("SELECT count(*) FROM jobs")
    for bad, text in [
        ({"priority": 1.5}, "priority: Input should be a valid integer"),
        ({"priority": "2"}, "priority: Input should be a valid integer"),
        ({"weight": True}, "weight: Input should be a valid integer"),
        ({"weight": 0}, "weight: Input should be greater than or equal to 1"),
        ({"priority": 1001}, "priority: Input should be less than or equal to 1000"),
    ]:
        body = {"pipeline": "echo", "count": 1, **bad}
        assert_problem(server.call(token, "POST", "/api/jobs", json=body), 422, text)
    # Not JSON's numbers: refused before any option is read.
    inf = server.call(
        token, "POST", "/api/jobs", content=b'{"pipeline": "echo", "count": 1, "weight": 1e400}',
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert_problem(inf, 422, "weight")
    assert count("SELECT count(*) FROM jobs") == before
    changed = server.call(token, "POST", f"/api/jobs/{job_id}/share", json={"weight": 2})
    assert changed.status_code == 200, changed.text
    assert changed.json()["weight"] == 2 and changed.json()["was_weight"] == 7
    assert changed.json()["priority"] == -3
    assert_problem(
        server.call(token, "POST", f"/api/jobs/{finished}/share", json={"priority": 1}),
        422, f"job {finished} is success: its share cannot change",
    )  # fmt: skip
    assert_problem(
        server.call(token, "POST", f"/api/jobs/{job_id}/share", json={"weight": 1.0e9}), 422
    )
    server.call(token, "POST", f"/api/jobs/{job_id}/cancel")


def test_retry_delay_and_rate_over_http_are_checked_and_kept(server: Server) -> None:
    token = new_token(Scope.SUBMIT)
    made = server.call(
        token, "POST", "/api/jobs",
        json={"pipeline": "echo", "count": 2, "retry_delay": [2, 60], "rate": "20/s"},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    with connection() as conn:
        row = conn.execute(
            "SELECT retry_delay_s, retry_delay_max_s, rate_per_s FROM jobs WHERE id = %s",
            (made.json()["job_id"],),
        ).fetchone()
    assert row is not None
    assert (row["retry_delay_s"], row["retry_delay_max_s"], row["rate_per_s"]) == (2, 60, 20)
    uploaded = server.call(
        token, "POST", "/api/jobs?pipeline=echo&retry_delay=0.5,10&rate=600/m",
        content=b'{"n": 1}\n', headers={"Content-Type": "application/x-ndjson"},
    )  # fmt: skip
    assert uploaded.status_code == 201, uploaded.text
    with connection() as conn:
        row = conn.execute(
            "SELECT retry_delay_s, retry_delay_max_s, rate_per_s FROM jobs WHERE id = %s",
            (uploaded.json()["job_id"],),
        ).fetchone()
    assert row is not None
    assert (row["retry_delay_s"], row["retry_delay_max_s"], row["rate_per_s"]) == (0.5, 10, 10)
    before = count("SELECT count(*) FROM jobs")
    for bad, text in [
        ({"rate": "fast"}, "rate: expected a rate like 20/s"),
        ({"retry_delay": "5,1"}, "retry-delay: need 0 <= BASE <= MAX"),
        ({"retry_delay": -1}, "retry-delay"),
    ]:
        body = {"pipeline": "echo", "count": 1, **bad}
        answer = server.call(token, "POST", "/api/jobs", json=body)
        assert 400 <= answer.status_code < 500 and text in answer.text, answer.text
    assert count("SELECT count(*) FROM jobs") == before


def test_an_ndjson_upload_is_streamed_into_one_job(server: Server) -> None:
    token = new_token(Scope.SUBMIT)

    def body() -> Iterator[bytes]:
        # Chunks that cut lines anywhere; CRLF line ends and blank lines too.
        text = "".join(f'{{"n": {i}}}\r\n' + ("\n" if i % 1000 == 0 else "") for i in range(20_000))
        data = text.encode()
        for start in range(0, len(data), 7_777):
            yield data[start : start + 7_777]

    made = server.call(
        token,
        "POST",
        "/api/jobs",
        params={"pipeline": "echo", "name": "upload", "max_deliver": 3},
        content=body(),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert made.status_code == 201, made.text
    job = made.json()
    assert job["total"] == 20_000 and job["name"] == "upload" and job["max_deliver"] == 3
    with connection() as conn:
        row = conn.execute(
            "SELECT payload::text AS p FROM job_tasks WHERE job_id = %(j)s AND task_no = 19999",
            {"j": job["job_id"]},
        ).fetchone()
    assert row is not None and row["p"] == '{"n": 19999}'


def test_bad_items_are_refused_in_the_cli_words_and_make_no_job(
    server: Server, tmp_path: Path
) -> None:
    token = new_token(Scope.SUBMIT)
    jobs_before = count("SELECT count(*) FROM jobs")
    lines = ['{"a": 1}', '{"a": 2}', "{oops}", '{"a": 4}']
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(lines) + "\n")
    cli = jobsys_cli("submit", "echo", "--items", str(items))
    said = cli.stderr.strip().removeprefix("jobsys: ").replace(f"{items}:", "line ")
    upload = server.call(
        token,
        "POST",
        "/api/jobs",
        params={"pipeline": "echo"},
        content=items.read_bytes(),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert assert_problem(upload, 422, "line 3: invalid JSON")["detail"] == said
    for body, text in [
        ({"pipeline": "echo", "items": [{"a": 1}, [1, 2]]}, "item 2: expected a JSON object"),
        ({"pipeline": "echo", "items": [{"a": 1}, "x" * 10]}, "item 2: expected a JSON object"),
        ({"pipeline": "nope", "items": [{"a": 1}]}, "unknown pipeline 'nope'"),
        ({"pipeline": "echo", "items": [{"a": 1}], "max_deliver": 0}, "max-deliver"),
        ({"pipeline": "echo", "items": [{"a": 1}], "colour": "red"}, "colour: Extra inputs"),
        ({"pipeline": "echo"}, "give exactly one of items or count"),
    ]:
        assert_problem(server.call(token, "POST", "/api/jobs", json=body), 422, text)
    nan = server.call(
        token,
        "POST",
        "/api/jobs",
        content=b'{"pipeline": "echo", "items": [{"x": NaN}]}',
        headers={"Content-Type": "application/json"},
    )
    assert_problem(nan, 422, "NaN is not valid JSON")
    second = b'{"x": "' + b"y" * 1_000_000 + b'"}'
    items.write_bytes(b'{"a": 1}\n' + second + b"\n")
    cli = jobsys_cli("submit", "echo", "--items", str(items))
    said = cli.stderr.strip().removeprefix("jobsys: ").replace(f"{items}:", "line ")
    too_long = server.call(
        token,
        "POST",
        "/api/jobs",
        params={"pipeline": "echo"},
        content=items.read_bytes(),
        headers={"Content-Type": "application/x-ndjson"},
    )
    body = assert_problem(too_long, 422, f"line 2: line is {len(second):,} bytes, over the")
    assert body["detail"] == said
    empty = server.call(
        token,
        "POST",
        "/api/jobs",
        params={"pipeline": "echo"},
        content=b"\n\n",
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert_problem(empty, 422, "upload has no items")
    assert_problem(
        server.call(
            token, "POST", "/api/jobs", content=b"a,b", headers={"Content-Type": "text/csv"}
        ),
        415,
        "text/csv",
    )
    assert_problem(server.call(token, "GET", "/api/jobs", params={"limit": 0}), 422, "limit")
    assert count("SELECT count(*) FROM jobs") == jobs_before


def test_bodies_over_their_limit_are_refused_with_413_and_make_nothing(tight: Server) -> None:
    token = new_token(Scope.SUBMIT)
    jobs_before = count("SELECT count(*) FROM jobs")
    big_json = {"pipeline": "echo", "items": [{"pad": "x" * 3000}]}
    assert_problem(tight.call(token, "POST", "/api/jobs", json=big_json), 413, "2,048-byte")

    def chunked(size: int) -> Iterator[bytes]:
        line = b'{"pad": "' + b"x" * 90 + b'"}\n'
        for _ in range(size // len(line)):
            yield line

    over = tight.call(
        token,
        "POST",
        "/api/jobs",
        params={"pipeline": "echo"},
        content=chunked(6000),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert_problem(over, 413, "4,096-byte")
    assert count("SELECT count(*) FROM jobs") == jobs_before
    under = tight.call(
        token,
        "POST",
        "/api/jobs",
        params={"pipeline": "echo"},
        content=chunked(3000),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert under.status_code == 201, under.text
    assert count("SELECT count(*) FROM jobs") == jobs_before + 1


def test_a_token_over_its_request_rate_gets_429_and_others_are_served(tight: Server) -> None:
    busy, other = new_token(Scope.READ), new_token(Scope.READ)
    answers = [tight.call(busy, "GET", "/api/token").status_code for _ in range(6)]
    assert answers == [200] * 5 + [429]
    limited = tight.call(busy, "GET", "/api/jobs")
    assert_problem(limited, 429, "try again in")
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert tight.call(other, "GET", "/api/token").status_code == 200


def test_repeated_failed_logins_from_an_address_are_slowed_down(
    tmp_path: Path, tokens: dict[Scope, str]
) -> None:
    srv = Server(tmp_path, env={"JOBSYS_SERVE_AUTH_FAILURES": "3/minute"}).start()
    try:
        wrong = ["jst_" + c * 43 for c in "XYZ"]
        assert [srv.call(t, "GET", "/api/token").status_code for t in wrong] == [401] * 3
        assert_problem(srv.call(wrong[0], "GET", "/api/token"), 429, "failed logins")
        assert_problem(srv.call(tokens[Scope.READ], "GET", "/api/token"), 429, "failed logins")
        assert srv.call(None, "GET", "/healthz").status_code == 200
    finally:
        srv.stop()
    assert not any(t in srv.log() for t in wrong)


@pytest.mark.skipif(not have_openssl(), reason="needs the openssl command")
def test_serve_over_tls_with_uvicorn_options(tmp_path: Path, tokens: dict[Scope, str]) -> None:
    pki = make_pki(tmp_path / "pki")
    extra = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    srv = Server(tmp_path, extra=extra, ca=pki.ca).start()
    try:
        assert srv.call(tokens[Scope.READ], "GET", "/api/token").status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{srv.port}/healthz", timeout=5)
        with pytest.raises(httpx.HTTPError):  # a client that does not trust the CA
            httpx.get(f"{srv.url}/healthz", timeout=5)
        doctor = jobsys_cli_env({"JOBSYS_SERVER_URL": srv.url, "JOBSYS_SERVER_TLS_CA": str(pki.ca)})
        assert doctor["ok"], doctor
        assert "(TLS)" in doctor["message"]
    finally:
        srv.stop()


def jobsys_cli_env(env: dict[str, str]) -> dict[str, Any]:
    """`jobsys doctor --json`'s server check with these settings."""
    proc = subprocess.run(
        [sys.executable, "-m", "jobsys.cli", "doctor", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    checks = {c["service"]: c for c in json.loads(proc.stdout)}
    check: dict[str, Any] = checks["server"]
    return check


def test_doctor_checks_the_server_when_its_url_is_set(server: Server) -> None:
    up = jobsys_cli_env({"JOBSYS_SERVER_URL": server.url})
    assert up["ok"] and "jobsys serve answers at" in up["message"], up
    down = jobsys_cli_env({"JOBSYS_SERVER_URL": "http://127.0.0.1:1"})
    assert not down["ok"] and "no answer at http://127.0.0.1:1" in down["message"]


def test_serving_beyond_loopback_without_tls_is_refused_in_one_line() -> None:
    proc = jobsys_cli("serve", "--host", "0.0.0.0", "--port", "1")
    assert proc.returncode == 1
    assert "without TLS would carry tokens in clear text" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_no_token_appears_in_any_log_line(
    server: Server, tight: Server, workers: LocalSystem, tokens: dict[Scope, str]
) -> None:
    token = tokens[Scope.READ]
    # Tokens where they do not belong: a query string, a path, a bad header.
    server.call(None, "GET", "/api/jobs", params={"access_token": token})
    server.call(token, "GET", f"/api/{token}")
    server.call(None, "GET", "/api/jobs", headers={"Authorization": f"Token {token}"})
    logs = server.log() + tight.log()
    logs += "".join(p.read_text(errors="replace") for p in workers.log_dir.glob("*.log"))
    assert '"GET /api/jobs' in logs and "authentication failed" in logs  # the logs are there
    assert TOKENS and not [t for t in TOKENS if t in logs]
    assert "jst_***" in logs


def test_every_route_in_the_openapi_document_was_called(
    request: pytest.FixtureRequest, document: dict[str, Any]
) -> None:
    defined = {n for n, v in vars(request.module).items() if n.startswith("test_") and callable(v)}
    selected = {
        getattr(i, "originalname", i.name)
        for i in request.session.items
        if getattr(i, "module", None) is request.module
    }
    if selected != defined:
        pytest.skip("only meaningful when the whole module runs")
    missing = [
        (method, template)
        for method, template, _ in operations(document)
        if not any(m == method and route_pattern(template).match(p) for m, p in CALLED)
    ]
    assert missing == []

"""A credential in a hook URL is never printed, stored in an event or shown by a view:
everything people see holds it redacted; only the sender reads the target as given."""

from __future__ import annotations

import json

import jobsys
from jobsys.bootstrap.start import run_bootstrap
from jobsys.pg.db import connection
from jobsys.worker.actors import process_results
from tests.helpers import pull_results
from tests.test_cli import jobsys_cli

PASSWORD = "S3cretPW"
TOKEN = "S3cretTok"
API_KEY = "S3cretKey"
# Port 9 (discard): nobody answers, whichever worker of this run tries.
TARGET = f"http://user:{PASSWORD}@127.0.0.1:9/hook?token={TOKEN}&api_key={API_KEY}&page=2"
SHOWN = "http://user:***@127.0.0.1:9/hook?token=***&api_key=***&page=2"
SECRETS = (PASSWORD, TOKEN, API_KEY)


def _rows(sql: str, *params: object) -> str:
    with connection() as conn:
        return json.dumps([dict(r) for r in conn.execute(sql, params).fetchall()], default=str)


def _views_of(job_id: int) -> str:
    """Every dashboard view's rows (as text) and the job's events."""
    listed = "SELECT table_name FROM information_schema.views WHERE table_schema = 'public'"
    views = json.loads(_rows(listed))
    out = [_rows(f'SELECT * FROM "{v["table_name"]}"') for v in views]
    out.append(_rows("SELECT * FROM job_events WHERE job_id = %s", job_id))
    return "\n".join(out)


def test_a_hook_urls_credentials_are_never_shown_stored_or_logged() -> None:
    created = jobsys_cli("submit", "echo", "--count", "2", "--on-complete", TARGET, "--json")
    assert created.returncode == 0, created.stderr
    job_id = json.loads(created.stdout)["job_id"]
    queued = jobsys_cli("status", str(job_id), "--json", check=True).stdout
    assert run_bootstrap(job_id) == "published"
    process_results.fn(job_id, pull_results(job_id, 2))
    assert jobsys.get_job(job_id).status == "success"
    shown = {
        "status --json (queued)": queued,
        "status": jobsys_cli("status", str(job_id), check=True).stdout,
        "status --json": jobsys_cli("status", str(job_id), "--json", check=True).stdout,
        "list --json": jobsys_cli("list", "--json", "--limit", "500", check=True).stdout,
        "list": jobsys_cli("list", "--limit", "500", check=True).stdout,
        "logs": jobsys_cli("logs", str(job_id), check=True).stdout,
        "logs --json": jobsys_cli("logs", str(job_id), "--json", check=True).stdout,
        "inspect": jobsys_cli("inspect", str(job_id), "--json").stdout,
        "views and events": _views_of(job_id),
    }
    leaks = [f"{secret} in {where}" for where, text in shown.items() for secret in SECRETS
             if secret in text]  # fmt: skip
    assert not leaks, "; ".join(leaks)
    status = json.loads(shown["status --json"])
    assert status["on_complete"] == SHOWN and status["hook"]["target"] == SHOWN
    with connection() as conn:
        row = conn.execute(
            "SELECT detail FROM job_events WHERE job_id = %s AND event = 'hook_due'", (job_id,)
        ).fetchone()
        assert row is not None and row["detail"]["target"] == SHOWN
        # The sender reads the target as given: it needs the credential.
        hook = conn.execute("SELECT target FROM job_hooks WHERE job_id = %s", (job_id,)).fetchone()
        assert hook is not None and hook["target"] == TARGET
        conn.execute("UPDATE job_hooks SET state = 'failed' WHERE job_id = %s", (job_id,))

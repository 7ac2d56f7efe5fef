"""`jobsys retry`: re-run a final job's failed (or lost) tasks as a new child job."""

from __future__ import annotations

import click

from jobsys.api.retry import RETRYABLE, retry
from jobsys.api.statuses import parse_statuses
from jobsys.cli.output import JOB_ID, echo_json


@click.command(name="retry")
@click.argument("job_id", type=JOB_ID)
@click.option("--status", default="failed,lost", show_default=True,
              help="Which tasks to re-run: failed, lost, cancelled, or a comma list.")  # fmt: skip
@click.option("--error-like", default=None, metavar="TEXT",
              help="Only tasks whose error contains TEXT (any case; % is a wildcard).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True,
              help="Print the new job (and what it retries) as JSON.")  # fmt: skip
def retry_cmd(job_id: int, status: str, error_like: str | None, as_json: bool) -> None:
    """Re-run JOB_ID's failed and lost tasks as a new job linked to it.

    JOB_ID must be final and is left as it is. The new job has the same
    pipeline, failure threshold, max deliveries and completion hook; each of
    its tasks keeps its original task number. `jobsys results JOB_ID
    --latest` then gives each task's latest outcome.

    \b
    Examples:
      jobsys retry 42
      jobsys retry 42 --status lost --json
      jobsys retry 42 --error-like timeout
    """
    statuses = parse_statuses(status, RETRYABLE)
    assert statuses is not None
    made = retry(job_id, statuses, error_like)
    view = made.job
    if as_json:
        echo_json({"job_id": view.job_id, "parent_id": made.parent_id,
                   "root_id": view.root_id, "status": view.status, "total": view.total,
                   "retried": made.retried})  # fmt: skip
        return
    shown = ", ".join(f"{s} {n:,}" for s, n in sorted(made.retried.items()))
    click.echo(f"job {view.job_id} {view.status}: retry of job {job_id} with "
               f"{view.total:,} tasks ({shown})")  # fmt: skip

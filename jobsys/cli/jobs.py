"""`jobsys submit`, `cancel`, `set`, `status`, `list`, `watch`: a job from submit to its end."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

import jobsys
from jobsys.api.items import counted_items, read_items
from jobsys.api.job import wait_for, with_blocked
from jobsys.api.read import hook_state
from jobsys.api.retry import retries_of
from jobsys.api.share import MAX_PRIORITY, MAX_WEIGHT, MIN_PRIORITY, MIN_WEIGHT
from jobsys.api.submit import MAX_IN_FLIGHT, MAX_TASK_TIMEOUT_S
from jobsys.cli.output import (
    JOB_COLUMNS,
    JOB_ID,
    FiniteFloat,
    echo_json,
    err_console,
    job_dict,
    job_rows,
    progress_bar,
    table,
)
from jobsys.display import printable

# `--count N` at most (more tasks than this come from an items file).
MAX_COUNT = 100_000_000


def job_links(job_id: int) -> dict[str, Any]:
    """What `jobsys status` adds to a job: the retries made from it and its hook's delivery."""
    return {"retries": retries_of(job_id), "hook": hook_state(job_id)}


@click.command()
@click.argument("pipeline")
@click.option("--items", "items_path",
              type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
              help="JSON Lines file, one JSON object per task ('-': standard input).")  # fmt: skip
@click.option("--count", type=click.IntRange(0, MAX_COUNT),
              help='Make N tasks {"n": i} instead of reading a file.')  # fmt: skip
@click.option("--name", default="", help="A name for the job.")
@click.option("--failure-threshold", type=FiniteFloat(0, 1), default=0.0, show_default=True,
              help="Fraction of tasks that may fail before the job ends `failure`.")  # fmt: skip
@click.option("--max-deliver", type=click.IntRange(1, 1_000), default=None,
              help="Deliveries per task (default JOBSYS_MAX_DELIVER).")  # fmt: skip
@click.option("--task-timeout", type=FiniteFloat(0, MAX_TASK_TIMEOUT_S, min_open=True),
              default=None,
              help="Seconds a task may run before it is stopped and retried "
                   "(default JOBSYS_TASK_TIMEOUT_S).")  # fmt: skip
@click.option("--max-in-flight", type=click.IntRange(1, MAX_IN_FLIGHT), default=None,
              help="At most N of the job's tasks delivered and unacknowledged at once, "
                   "across all processors (default JOBSYS_MAX_ACK_PENDING).")  # fmt: skip
@click.option("--retry-delay", default=None, metavar="BASE[,MAX]",
              help="Backoff between deliveries of a task that failed transiently: BASE "
                   "seconds, doubling up to MAX, plus up to 25% jitter (default: the "
                   "pipeline's, else JOBSYS_RETRY_DELAY_S,JOBSYS_RETRY_DELAY_MAX_S).")  # fmt: skip
@click.option("--rate", default=None, metavar="N/s",
              help="At most N of the job's tasks start per second, across all "
                   "processors (also N/m, N/h); a short burst is allowed "
                   "(JOBSYS_RATE_BURST_S).")  # fmt: skip
@click.option("--on-complete", default=None, metavar="TARGET",
              help="When the job is final: module:actor or an http(s) URL, once.")  # fmt: skip
@click.option("--priority", type=click.IntRange(MIN_PRIORITY, MAX_PRIORITY), default=0,
              show_default=True,
              help="When slots are short, higher-priority jobs' tasks start first.")  # fmt: skip
@click.option("--weight", type=click.IntRange(MIN_WEIGHT, MAX_WEIGHT), default=1,
              show_default=True,
              help="Among jobs of one priority, slots are shared by weight.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
def submit(
    pipeline: str,
    items_path: Path | None,
    count: int | None,
    name: str,
    failure_threshold: float,
    max_deliver: int | None,
    task_timeout: float | None,
    max_in_flight: int | None,
    retry_delay: str | None,
    rate: str | None,
    on_complete: str | None,
    priority: int,
    weight: int,
    as_json: bool,
) -> None:
    """Create a job of PIPELINE over an items file or N generated tasks.

    \b
    Examples:
      jobsys submit echo --count 10000
      jobsys submit sha256 --items files.jsonl --name nightly --failure-threshold 0.01
      find . -name '*.jpg' | jq -Rc '{path: .}' | jobsys submit mypkg.images:resize --items -
      jobsys submit mypkg.tasks:resize --items photos.jsonl --json
      jobsys submit echo --count 100 --on-complete https://example.com/hooks/jobsys
      jobsys submit echo --count 1000 --priority 1 --weight 3
    """
    if (items_path is None) == (count is None):
        raise click.UsageError("give exactly one of --items FILE or --count N")
    items = read_items(items_path) if items_path is not None else counted_items(count or 0)
    options: dict[str, Any] = {
        "name": name,
        "failure_threshold": failure_threshold,
        "max_deliver": max_deliver,
        "task_timeout_s": task_timeout,
        "max_in_flight": max_in_flight,
        "retry_delay": retry_delay,
        "rate": rate,
        "on_complete": on_complete,
        "priority": priority,
        "weight": weight,
    }
    big = items_path is not None or (count or 0) >= 50_000
    if as_json or not big or not sys.stderr.isatty():
        job = jobsys.submit(pipeline, items, **options)
    else:
        with progress_bar("submitting", count) as update:
            job = jobsys.submit(
                pipeline, items, on_progress=lambda n: update(n, status="tasks written"), **options
            )
    view = jobsys.get_job(job.id)
    if as_json:
        echo_json({"job_id": view.job_id, "status": view.status, "total": view.total})
    else:
        click.echo(
            printable(f"job {view.job_id} {view.status}: {view.total} tasks of {view.pipeline}")
        )


@click.command()
@click.argument("job_id", type=JOB_ID)
@click.option("--json", "as_json", is_flag=True, help="Print {job_id, status, changed}.")
def cancel(job_id: int, as_json: bool) -> None:
    """Cancel JOB_ID: stop its remote work and end it `revoked`.

    A job that already finished is left as it is (changed: false). A big job
    comes back `canceling`: its work has stopped, and the workers cancel its
    remaining pending tasks in chunks and end it `revoked`.

    \b
    Example:
      jobsys cancel 42 --json
    """
    result = jobsys.cancel(job_id)
    if as_json:
        echo_json({"job_id": result.job_id, "status": result.status, "changed": result.changed})
    elif result.changed and result.status == "canceling":
        click.echo(f"job {job_id} canceling: its work stopped; the workers cancel its pending "
                   f"tasks and revoke it (`jobsys watch {job_id}`)")  # fmt: skip
    elif result.changed:
        click.echo(f"job {job_id} cancelled: {result.status}")
    else:
        click.echo(f"job {job_id} is already {result.status}: nothing changed")


@click.command(name="set")
@click.argument("job_id", type=JOB_ID)
@click.option("--priority", type=click.IntRange(MIN_PRIORITY, MAX_PRIORITY), default=None,
              help="The job's new priority.")  # fmt: skip
@click.option("--weight", type=click.IntRange(MIN_WEIGHT, MAX_WEIGHT), default=None,
              help="The job's new weight.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True,
              help="Print the job's share now and before as JSON.")  # fmt: skip
def set_cmd(job_id: int, priority: int | None, weight: int | None, as_json: bool) -> None:
    """Change an active JOB_ID's share of the processors' slots (priority, weight).

    The processors serving it follow within about a second. A final job is
    refused; the change is recorded in the job's events (`jobsys logs`).

    \b
    Example:
      jobsys set 42 --priority 2 --weight 5
    """
    if priority is None and weight is None:
        raise click.UsageError("give --priority N and/or --weight W")
    result = jobsys.set_share(job_id, priority=priority, weight=weight)
    if as_json:
        echo_json({
            "job_id": result.job_id, "status": result.status,
            "priority": result.priority, "weight": result.weight,
            "was_priority": result.was_priority, "was_weight": result.was_weight,
        })  # fmt: skip
    else:
        click.echo(
            f"job {job_id} {result.status}: priority {result.was_priority} -> {result.priority}, "
            f"weight {result.was_weight} -> {result.weight}"
        )


@click.command()
@click.argument("job_id", type=JOB_ID)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
def status(job_id: int, as_json: bool) -> None:
    """Show JOB_ID's status and counters, and why it cannot move on (`blocked`) when
    it cannot: no worker or processor running, its pipeline refused by the
    processors (and their reason), NATS not reachable.

    \b
    Example:
      jobsys status 42 --json
    """
    view = with_blocked(jobsys.get_job(job_id))
    data = {**job_dict(view), **job_links(job_id)}
    if as_json:
        echo_json(data)
        return
    rows = [[k, v] for k, v in data.items()]
    table(f"job {job_id}", ["field", "value"], rows)


@click.command(name="list")
@click.option("--status", "status_filter", type=click.Choice(
    ["queued", "started", "canceling", "success", "failure", "revoked"]), default=None)  # fmt: skip
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_cmd(status_filter: str | None, limit: int, as_json: bool) -> None:
    """List recent jobs, newest first.

    \b
    Example:
      jobsys list --status started
    """
    views = jobsys.list_jobs(status_filter, limit)
    if as_json:
        echo_json([job_dict(v) for v in views])
    else:
        table(None, JOB_COLUMNS, job_rows(views))


@click.command()
@click.argument("job_id", type=JOB_ID)
@click.option("--timeout", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Give up after this many seconds.")  # fmt: skip
def watch(job_id: int, timeout: float | None) -> None:
    """Show a progress bar until JOB_ID is final; exit 0 on success, 1 otherwise.

    When the job has not moved for a few seconds, the bar says why it cannot
    (no worker or processor running, its pipeline refused by the processors).

    \b
    Example:
      jobsys watch 42
    """
    jobsys.get_job(job_id)  # JobNotFound before any bar is drawn
    final = wait_for(job_id, timeout=timeout, console=err_console)
    click.echo(
        f"job {job_id} {final.status}: done {final.done}, failed {final.failed}, "
        f"lost {final.lost}, cancelled {final.cancelled} of {final.total}"
    )
    sys.exit(0 if final.status == "success" else 1)

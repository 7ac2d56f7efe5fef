"""`jobsys prune`: delete the task ledgers and events of long-finished jobs now."""

from __future__ import annotations

import click

from jobsys.cli.output import FiniteFloat, echo_json, table
from jobsys.lifecycle.retention import prune

# `--older-than` at most: a million days (Postgres intervals end at ~178 million years).
MAX_DAYS = 1_000_000


@click.command(name="prune")
@click.option("--older-than", "older_than", type=FiniteFloat(0, MAX_DAYS), default=None,
              metavar="DAYS",
              help="Jobs final for longer than this (default JOBSYS_RETAIN_DAYS).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def prune_cmd(older_than: float | None, dry_run: bool, as_json: bool) -> None:
    """Delete the ledger rows and events of jobs final for longer than DAYS.

    The job rows stay, with their counters, and say the ledger was pruned.
    Runs in short chunks that never hold up running jobs; the reconciler
    does the same with JOBSYS_RETAIN_DAYS (default 30) on every pass.

    \b
    Examples:
      jobsys prune --dry-run
      jobsys prune --older-than 7 --json
    """
    report = prune(older_than, dry_run)
    if as_json:
        echo_json(report.as_dict())
        return
    verb = "would delete" if dry_run else "deleted"
    if report.jobs:
        table(
            None,
            ["job", "status", "finished", "tasks", "events"],
            [[j.job_id, j.status, j.finished_at.strftime("%Y-%m-%d %H:%M:%S"), j.tasks, j.events]
             for j in report.jobs],
        )  # fmt: skip
    click.echo(
        f"{verb} {report.tasks:,} ledger rows and {report.events:,} events of "
        f"{len(report.jobs):,} job(s) final for more than {report.older_than_days:g} days"
    )

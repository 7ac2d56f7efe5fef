"""`jobsys reconcile`, `jobsys scheduler`, `jobsys inspect`: the reconciler from the CLI."""

from __future__ import annotations

from typing import Any

import click

from jobsys.cli.output import JOB_ID, echo_json, table
from jobsys.reconciler import inspect_job, reconcile_pass
from jobsys.worker.scheduler import run_scheduler


@click.command()
@click.option("--json", "as_json", is_flag=True,
              help='Print {"jobs_checked": n, "findings": [...]} instead of a table.')  # fmt: skip
def reconcile(as_json: bool) -> None:
    """Run one reconciler pass now, in this process, and print what it found and did.

    Safe to run while the scheduler's passes run too (each job is acted on
    by one pass at a time). For cron: `* * * * * jobsys reconcile`.

    \b
    Example:
      jobsys reconcile --json
    """
    report = reconcile_pass(trigger="cli")
    if as_json:
        out = report.as_dict()
        out.pop("run_id")
        echo_json(out)
        return
    click.echo(
        f"pass {report.run_id}: {report.jobs_checked} active job(s) checked, "
        f"{len(report.findings)} finding(s)"
    )
    if report.findings:
        table(
            None,
            ["job", "finding", "action", "detail"],
            [[f.job_id, f.kind, f.action, _short(f.detail)] for f in report.findings],
        )


def _short(detail: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in detail.items() if k != "saw")


@click.command()
def scheduler() -> None:
    """Enqueue a reconcile pass every JOBSYS_RECONCILE_EVERY_S seconds (default 60).

    The passes run on the workers (`jobsys worker`). Stops on SIGTERM/SIGINT.

    \b
    Example:
      JOBSYS_RECONCILE_EVERY_S=30 jobsys scheduler
    """
    run_scheduler()


@click.command()
@click.argument("job_id", type=JOB_ID)
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON object.")
def inspect(job_id: int, as_json: bool) -> None:
    """Show a job's counters, its ledger's counts and NATS's stream and consumer
    state side by side, with the reconciler's latest findings about it.

    \b
    Example:
      jobsys inspect 42
    """
    info = inspect_job(job_id)
    if as_json:
        echo_json(info)
        return
    counters, ledger = info["counters"], info["ledger"]
    rows = [[k, counters.get(k, ""), ledger.get(k, "")]
            for k in ("done", "failed", "lost", "cancelled", "total")]  # fmt: skip
    rows.insert(0, ["pending", "", ledger.get("pending", "")])
    rows.append(["published", counters["published"], ""])
    table(f"job {job_id} ({info['status']})", ["count", "job counters", "ledger"], rows)
    nats = info["nats"]
    table(f"NATS stream {nats['stream_name']}", ["field", "value"],
          [[k, v] for k, v in nats.items() if k != "stream_name"])  # fmt: skip
    if info["findings"]:
        table(
            "reconciler findings (latest first)",
            ["last seen", "run", "finding", "action", "passes", "detail"],
            [[f["at"].isoformat(timespec="seconds"), f["run_id"], f["kind"], f["action"],
              f.get("seen", 1), _short(f["detail"])] for f in info["findings"]],
        )  # fmt: skip
    else:
        click.echo("no reconciler findings for this job")

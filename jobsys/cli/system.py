"""`jobsys db migrate`, `jobsys doctor`, `jobsys demo`: setting a deployment up and checking it."""

from __future__ import annotations

import sys
import time

import click

import jobsys
from jobsys.api.items import counted_items
from jobsys.api.read import wait_until_final
from jobsys.cli.output import echo_json, progress_bar, table
from jobsys.models import JobView
from jobsys.ops.doctor import check_all
from jobsys.ops.runner import LocalSystem
from jobsys.pg.migrate import current_version
from jobsys.pg.migrate import migrate as run_migrations
from jobsys.settings import get_settings


@click.group()
def db() -> None:
    """Database schema commands.

    \b
    Example:
      jobsys db migrate
    """


@db.command()
def migrate() -> None:
    """Apply the numbered migrations in sql/ that are not applied yet.

    \b
    Example:
      jobsys db migrate
    """
    applied = run_migrations()
    version = current_version()
    if applied:
        click.echo(f"applied {', '.join(applied)}; schema version {version}")
    else:
        click.echo(f"schema up to date (version {version})")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of checks.")
def doctor(as_json: bool) -> None:
    """Check the settings, Postgres, the schema, Redis and NATS; one line each.

    The settings line names the env files read; under it, where each setting
    that is not a default came from.

    \b
    Example:
      jobsys doctor
      jobsys doctor --json
    """
    checks = check_all(get_settings())
    if as_json:
        echo_json([{"service": c.service, "ok": c.ok, "message": c.message,
                    "details": list(c.details)} for c in checks])  # fmt: skip
    else:
        for check in checks:
            mark = "ok  " if check.ok else "FAIL"
            click.echo(f"{mark} {check.service}: {check.message}")
            for line in check.details:
                click.echo(f"       {line}")
    if not all(c.ok for c in checks):
        sys.exit(1)


@click.command()
@click.option("--count", type=click.IntRange(0, 10_000_000), default=10_000, show_default=True)
@click.option("--pipeline", default="echo", show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 256), default=8, show_default=True)
def demo(count: int, pipeline: str, concurrency: int) -> None:
    """Run a real job end to end: start a worker and a processor, submit, watch.

    \b
    Example:
      jobsys demo --count 10000
    """
    run_migrations()
    system = LocalSystem(workers=1, processors=1, concurrency=concurrency)
    click.echo(f"starting a worker and a processor (logs in {system.log_dir}/)")
    with system:
        started = time.monotonic()
        job = jobsys.submit(pipeline, counted_items(count), name="demo")
        click.echo(f"submitted job {job.id}: {count} tasks of {pipeline}")
        with progress_bar(f"job {job.id}", count or None) as update:

            def on_update(v: JobView) -> None:
                system.check_alive()
                update(v.total - v.pending, v.total, status=v.status)

            final = wait_until_final(job.id, timeout=3600, on_update=on_update)
        seconds = time.monotonic() - started
    rate = final.total / seconds if seconds > 0 else 0.0
    table(
        "demo summary",
        ["job", "status", "tasks", "done", "failed", "seconds", "tasks/s"],
        [[final.job_id, final.status, final.total, final.done, final.failed,
          f"{seconds:.2f}", f"{rate:,.0f}"]],
    )  # fmt: skip
    if final.status != "success":
        sys.exit(1)

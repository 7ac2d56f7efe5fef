"""The `jobsys` command: submit, cancel and watch jobs; run workers and processors.

Every error is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click
import psycopg
import redis.exceptions
from pydantic import ValidationError

import jobsys
from jobsys.api.items import counted_items, read_items
from jobsys.cli.output import JOB_COLUMNS, echo_json, job_dict, job_rows, progress_bar, table
from jobsys.dramatiq.signing import require_secret
from jobsys.errors import JobsysError
from jobsys.logs import setup_logging
from jobsys.models import JobView
from jobsys.probes import one_line
from jobsys.settings import get_settings

JOB_ID = click.IntRange(min=1)
SERVICE_COMMANDS = {"worker", "process", "scheduler", "exporter"}

# `--metrics-port` of the long-running commands; JOBSYS_METRICS_PORT is its default.
METRICS_PORT = click.option(
    "--metrics-port", type=click.IntRange(1, 65_535), default=None,
    help="Serve Prometheus metrics on this port (default JOBSYS_METRICS_PORT; unset: off).",
)  # fmt: skip


# libpq's errors about a connection string (not about SQL).
_CONNINFO_ERROR = re.compile(r"connection info string|connection option|URI|invalid \w+ value")


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"jobsys: {message}", err=True)
    sys.exit(code)


class JobsysGroup(click.Group):
    """Turns every known failure into one line on stderr."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except JobsysError as exc:
            _fail(str(exc))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            _fail(f"invalid setting JOBSYS_{where.upper()}: {first['msg']}")
        except psycopg.errors.UndefinedTable:
            _fail("the database schema is missing: run `jobsys db migrate`")
        except psycopg.OperationalError as exc:
            _fail(f"Postgres not reachable ({one_line(exc)}); run `make services`")
        except psycopg.ProgrammingError as exc:
            # libpq quotes a malformed URL back: one redacted line, not a traceback.
            if not _CONNINFO_ERROR.search(str(exc)):
                raise
            _fail(f"invalid JOBSYS_DATABASE_URL ({one_line(exc)})")
        except redis.exceptions.ConnectionError as exc:
            _fail(f"Redis not reachable ({one_line(exc)}); run `make services`")
        except KeyboardInterrupt:
            _fail("interrupted", 130)


@click.group(cls=JobsysGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """jobsys: fan-out batch jobs with exact counts.

    \b
    Example:
      jobsys submit echo --count 1000 --name hello
      jobsys watch 1
    """
    settings = get_settings()
    ctx = click.get_current_context()
    # Long-running services log every event; interactive commands only warnings,
    # unless JOBSYS_LOG_LEVEL asks for more.
    quiet = ctx.invoked_subcommand not in SERVICE_COMMANDS and "JOBSYS_LOG_LEVEL" not in os.environ
    secrets = [s.get_secret_value() for s in (settings.secret, settings.secret_previous) if s]
    setup_logging(settings.log_format, "WARNING" if quiet else settings.log_level, secrets)
    if ctx.invoked_subcommand in SERVICE_COMMANDS:
        # A service that cannot sign (or check) messages must not start.
        require_secret(settings)


# -- jobs -------------------------------------------------------------------


@main.command()
@click.argument("pipeline")
@click.option("--items", "items_path", type=click.Path(path_type=Path, dir_okay=False),
              help="JSON Lines file, one JSON object per task.")  # fmt: skip
@click.option("--count", type=int, help='Make N tasks {"n": i} instead of reading a file.')
@click.option("--name", default="", help="A name for the job.")
@click.option("--failure-threshold", type=float, default=0.0, show_default=True,
              help="Fraction of tasks that may fail before the job ends `failure`.")  # fmt: skip
@click.option("--max-deliver", type=int, default=None,
              help="Deliveries per task (default JOBSYS_MAX_DELIVER).")  # fmt: skip
@click.option("--task-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds a task may run before it is stopped and retried "
                   "(default JOBSYS_TASK_TIMEOUT_S).")  # fmt: skip
@click.option("--max-in-flight", type=click.IntRange(min=1), default=None,
              help="At most N of the job's tasks delivered and unacknowledged at once, "
                   "across all processors (default JOBSYS_MAX_ACK_PENDING).")  # fmt: skip
@click.option("--on-complete", default=None, metavar="TARGET",
              help="When the job is final: module:actor or an http(s) URL, once.")  # fmt: skip
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
    on_complete: str | None,
    as_json: bool,
) -> None:
    """Create a job of PIPELINE over an items file or N generated tasks.

    \b
    Examples:
      jobsys submit echo --count 10000
      jobsys submit sha256 --items files.jsonl --name nightly --failure-threshold 0.01
      jobsys submit mypkg.tasks:resize --items photos.jsonl --json
      jobsys submit echo --count 100 --on-complete https://example.com/hooks/jobsys
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
        "on_complete": on_complete,
    }
    big = items_path is not None or (count or 0) >= 50_000
    if as_json or not big or not sys.stderr.isatty():
        view = jobsys.submit(pipeline, items, **options)
    else:
        with progress_bar("submitting", count) as update:
            view = jobsys.submit(
                pipeline, items, on_progress=lambda n: update(n, status="tasks written"), **options
            )
    if as_json:
        echo_json({"job_id": view.job_id, "status": view.status, "total": view.total})
    else:
        click.echo(f"job {view.job_id} {view.status}: {view.total} tasks of {view.pipeline}")


@main.command()
@click.argument("job_id", type=JOB_ID)
@click.option("--json", "as_json", is_flag=True, help="Print {job_id, status, changed}.")
def cancel(job_id: int, as_json: bool) -> None:
    """Cancel JOB_ID: stop its remote work and end it `revoked`.

    A job that already finished is left as it is (changed: false).

    \b
    Example:
      jobsys cancel 42 --json
    """
    result = jobsys.cancel(job_id)
    if as_json:
        echo_json({"job_id": result.job_id, "status": result.status, "changed": result.changed})
    elif result.changed:
        click.echo(f"job {job_id} cancelled: {result.status}")
    else:
        click.echo(f"job {job_id} is already {result.status}: nothing changed")


@main.command()
@click.argument("job_id", type=JOB_ID)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
def status(job_id: int, as_json: bool) -> None:
    """Show JOB_ID's status and counters.

    \b
    Example:
      jobsys status 42 --json
    """
    view = jobsys.get_job(job_id)
    data = {**job_dict(view), **job_links(job_id)}
    if as_json:
        echo_json(data)
        return
    rows = [[k, v] for k, v in data.items()]
    table(f"job {job_id}", ["field", "value"], rows)


@main.command(name="list")
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


@main.command()
@click.argument("job_id", type=JOB_ID)
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
def watch(job_id: int, timeout: float | None) -> None:
    """Show a progress bar until JOB_ID is final; exit 0 on success, 1 otherwise.

    \b
    Example:
      jobsys watch 42
    """
    from jobsys.api.read import wait_until_final

    view = jobsys.get_job(job_id)
    with progress_bar(f"job {job_id}", view.total or None) as update:
        final = wait_until_final(
            job_id,
            timeout=timeout or float("inf"),
            on_update=lambda v: update(v.total - v.pending, v.total, status=v.status),
        )
    click.echo(
        f"job {job_id} {final.status}: done {final.done}, failed {final.failed}, "
        f"lost {final.lost}, cancelled {final.cancelled} of {final.total}"
    )
    sys.exit(0 if final.status == "success" else 1)


# -- processes --------------------------------------------------------------


@main.command()
@click.option("--concurrency", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="Pipeline slots: child processes (threads with --pool threads).")  # fmt: skip
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=None,
              help="Results per batch message (default JOBSYS_RESULT_BATCH_SIZE).")  # fmt: skip
@click.option("--pool", type=click.Choice(["processes", "threads"]), default="processes",
              show_default=True,
              help="processes: each pipeline call runs in an isolated child process; a crash "
                   "or a time limit costs only its task. threads: pipelines run on threads of "
                   "the processor (for I/O-bound code) and give up isolation: a crash kills the "
                   "processor and every task it holds is delivered again, and a call past its "
                   "time limit cannot be stopped (its task is handed back, the thread "
                   "abandoned).")  # fmt: skip
@METRICS_PORT
def process(concurrency: int, batch_size: int | None, pool: str, metrics_port: int | None) -> None:
    """Run a processor: pull tasks from NATS, run pipelines, send results.

    Stops gracefully on SIGTERM: running tasks finish, the rest are handed back.

    \b
    Example:
      jobsys process --concurrency 16 --metrics-port 9101
      jobsys process --pool threads --concurrency 64
    """
    from jobsys.dramatiq.broker import setup_broker
    from jobsys.metrics import serve
    from jobsys.processor import main as run_processor

    # A processor only sends: its broker does no maintenance, so its Redis
    # user needs nothing but enqueueing (docs/security.md).
    setup_broker(maintenance=False)
    serve(metrics_port or get_settings().metrics_port)
    run_processor(
        concurrency=concurrency,
        batch_size=batch_size,
        pool="threads" if pool == "threads" else "processes",
    )


@main.command()
@click.option("--processes", type=click.IntRange(1, 256), default=1, show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=8, show_default=True)
@METRICS_PORT
def worker(processes: int, threads: int, metrics_port: int | None) -> None:
    """Run Dramatiq workers for the jobsys actors (bootstrap, results, teardown).

    With --processes > 1 a supervisor restarts any child that dies.

    \b
    Example:
      jobsys worker --processes 2 --threads 8 --metrics-port 9102
    """
    from jobsys.worker.run import run_worker, supervise

    port = metrics_port or get_settings().metrics_port
    if processes == 1:
        run_worker(threads, port)
    else:
        supervise(processes, threads, port)


# -- operations -------------------------------------------------------------


@main.group()
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
    from jobsys.pg.migrate import current_version, migrate

    applied = migrate()
    version = current_version()
    if applied:
        click.echo(f"applied {', '.join(applied)}; schema version {version}")
    else:
        click.echo(f"schema up to date (version {version})")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of checks.")
def doctor(as_json: bool) -> None:
    """Check Postgres, the schema, Redis and NATS; one line each.

    \b
    Example:
      jobsys doctor
      jobsys doctor --json
    """
    from jobsys.ops.doctor import check_all

    checks = check_all(get_settings())
    if as_json:
        echo_json([{"service": c.service, "ok": c.ok, "message": c.message} for c in checks])
    else:
        for check in checks:
            mark = "ok  " if check.ok else "FAIL"
            click.echo(f"{mark} {check.service}: {check.message}")
    if not all(c.ok for c in checks):
        sys.exit(1)


@main.command()
@click.option("--count", type=click.IntRange(0, 10_000_000), default=10_000, show_default=True)
@click.option("--pipeline", default="echo", show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 256), default=8, show_default=True)
def demo(count: int, pipeline: str, concurrency: int) -> None:
    """Run a real job end to end: start a worker and a processor, submit, watch.

    \b
    Example:
      jobsys demo --count 10000
    """
    from jobsys.api.read import wait_until_final
    from jobsys.ops.runner import LocalSystem
    from jobsys.pg.migrate import migrate as run_migrations

    run_migrations()
    system = LocalSystem(workers=1, processors=1, concurrency=concurrency)
    click.echo(f"starting a worker and a processor (logs in {system.log_dir}/)")
    with system:
        started = time.monotonic()
        view = jobsys.submit(pipeline, counted_items(count), name="demo")
        click.echo(f"submitted job {view.job_id}: {count} tasks of {pipeline}")
        with progress_bar(f"job {view.job_id}", count or None) as update:

            def on_update(v: JobView) -> None:
                system.check_alive()
                update(v.total - v.pending, v.total, status=v.status)

            final = wait_until_final(view.job_id, timeout=3600, on_update=on_update)
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


from jobsys.cli.export import results, tasks  # noqa: E402
from jobsys.cli.exporter import exporter  # noqa: E402
from jobsys.cli.logs import logs  # noqa: E402
from jobsys.cli.prune import prune_cmd  # noqa: E402
from jobsys.cli.reconcile import inspect, reconcile, scheduler  # noqa: E402
from jobsys.cli.retry import job_links, retry_cmd  # noqa: E402
from jobsys.cli.top import top  # noqa: E402

main.add_command(exporter)
main.add_command(top)
main.add_command(logs)
main.add_command(reconcile)
main.add_command(scheduler)
main.add_command(inspect)
main.add_command(results)
main.add_command(tasks)
main.add_command(retry_cmd)
main.add_command(prune_cmd)

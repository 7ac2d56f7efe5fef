"""`jobsys process`: a processor in this process."""

from __future__ import annotations

import click

from jobsys.cli.output import METRICS_PORT
from jobsys.dramatiq.broker import setup_broker
from jobsys.metrics import serve
from jobsys.processor import main as run_processor
from jobsys.settings import get_settings


@click.command()
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
    # A processor only sends: its broker does no maintenance, so its Redis
    # user needs nothing but enqueueing (docs/security.md).
    setup_broker(maintenance=False)
    serve(metrics_port or get_settings().metrics_port)
    run_processor(
        concurrency=concurrency,
        batch_size=batch_size,
        pool="threads" if pool == "threads" else "processes",
    )

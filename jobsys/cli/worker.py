"""`jobsys worker`: Dramatiq workers for the jobsys actors."""

from __future__ import annotations

import click

from jobsys.cli.output import METRICS_PORT
from jobsys.settings import get_settings
from jobsys.worker.run import run_worker, supervise


@click.command()
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
    port = metrics_port or get_settings().metrics_port
    if processes == 1:
        run_worker(threads, port)
    else:
        supervise(processes, threads, port)

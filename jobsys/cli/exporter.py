"""`jobsys exporter`: Prometheus gauges read from Postgres."""

from __future__ import annotations

import signal
import threading

import click

from jobsys.ops.exporter import serve_exporter


@click.command()
@click.option("--port", type=click.IntRange(1, 65_535), required=True,
              help="Serve /metrics on this port.")  # fmt: skip
@click.option("--addr", default="0.0.0.0", show_default=True, help="Address to listen on.")
def exporter(port: int, addr: str) -> None:
    """Serve jobs by status and each active job's pending/done/failed/lost as
    Prometheus gauges, read from Postgres at every scrape. Stops on SIGTERM/SIGINT.

    \b
    Example:
      jobsys exporter --port 9100
    """
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve_exporter(port, addr)
    click.echo(f"jobsys exporter: serving http://{addr}:{port}/metrics", err=True)
    stop.wait()

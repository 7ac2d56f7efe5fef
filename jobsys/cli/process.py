"""`jobsys process`: a processor in this process (native, or remote with --server)."""

from __future__ import annotations

from pathlib import Path

import click

from jobsys.cli.output import METRICS_PORT
from jobsys.dramatiq.broker import setup_broker
from jobsys.dramatiq.signing import require_secret
from jobsys.metrics import serve
from jobsys.processor import main as run_processor
from jobsys.processor.processor import Pool
from jobsys.processor.remote import main as run_remote
from jobsys.server.tokens import TOKEN_RE, parse_pipelines
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
@click.option("--server", "server_url", metavar="URL", default=None,
              help="Run as a remote processor: take tasks from `jobsys serve` at URL over "
                   "HTTP(S) (no NATS, Redis or Postgres setting needed).")  # fmt: skip
@click.option("--token", envvar="JOBSYS_TOKEN", default=None, metavar="TOKEN",
              help="With --server: a `process` token (or JOBSYS_TOKEN, which keeps it out of "
                   "the process list).")  # fmt: skip
@click.option("--pipelines", default=None, metavar="A,B",
              help="With --server: serve only these pipelines (default: every one the "
                   "token names).")  # fmt: skip
@click.option("--server-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="With --server: the CA that signed the server's "
                                 "certificate (default: the system's).")  # fmt: skip
@METRICS_PORT
def process(
    concurrency: int,
    batch_size: int | None,
    pool: str,
    server_url: str | None,
    token: str | None,
    pipelines: str | None,
    server_ca: Path | None,
    metrics_port: int | None,
) -> None:
    """Run a processor: pull tasks, run pipelines, send results.

    Native (default): tasks from NATS, results through Redis. Remote (--server):
    tasks leased from `jobsys serve` over HTTP(S) with a `process` token, results
    reported back to it; the machine needs nothing else.

    Stops gracefully on SIGTERM: running tasks finish, the rest are handed back.

    \b
    Example:
      jobsys process --concurrency 16 --metrics-port 9101
      jobsys process --pool threads --concurrency 64
      JOBSYS_TOKEN=jst_... jobsys process --server https://jobs.example.com
    """
    chosen_pool: Pool = "threads" if pool == "threads" else "processes"
    if server_url is not None:
        if not server_url.startswith(("http://", "https://")):
            raise click.BadParameter("must start with https:// (or http://)", param_hint="--server")
        if token is None or not TOKEN_RE.match(token.strip()):
            raise click.BadParameter("give a jobsys token (jst_...), or set JOBSYS_TOKEN",
                                     param_hint="--token")  # fmt: skip
        names = parse_pipelines(pipelines)
        if metrics_port:
            serve(metrics_port)
        run_remote(server_url, token.strip(), concurrency, batch_size, chosen_pool,
                   list(names) if names is not None else None, server_ca)  # fmt: skip
        return
    if token is not None and not token.strip():
        raise click.BadParameter("empty", param_hint="--token")
    # A native processor signs what it sends: it must not start without a secret.
    require_secret(get_settings())
    # A processor only sends: its broker does no maintenance, so its Redis
    # user needs nothing but enqueueing (docs/security.md).
    setup_broker(maintenance=False)
    serve(metrics_port or get_settings().metrics_port)
    run_processor(concurrency=concurrency, batch_size=batch_size, pool=chosen_pool)

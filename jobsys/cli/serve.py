"""`jobsys serve`: the HTTP API (jobsys/server/)."""

from __future__ import annotations

from pathlib import Path

import click

from jobsys.server.run import serve as run_server

FILE = click.Path(path_type=Path, dir_okay=False)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (not loopback: TLS or --plain-http).")  # fmt: skip
@click.option("--port", type=click.IntRange(1, 65_535), default=8080, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Server processes (each counts request rates alone).")  # fmt: skip
@click.option("--tls-cert", type=FILE, default=None, help="Serve HTTPS with this certificate...")
@click.option("--tls-key", type=FILE, default=None, help="...and this private key.")
@click.option("--plain-http", is_flag=True,
              help="Listen beyond loopback without TLS (behind a TLS proxy).")  # fmt: skip
def serve(
    host: str,
    port: int,
    workers: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    plain_http: bool,
) -> None:
    """Serve the HTTP API: the jobs API under /api/, the OpenAPI document at
    /openapi.json, /healthz. Every call but /healthz needs a token
    (`jobsys token create`). Stops gracefully on SIGTERM.

    \b
    Examples:
      jobsys serve --port 8080
      jobsys serve --host 0.0.0.0 --port 8443 --tls-cert cert.pem --tls-key key.pem
      jobsys serve --host 10.0.0.5 --port 8080 --plain-http --workers 4   # behind Caddy
    """
    run_server(host, port, workers, tls_cert, tls_key, plain_http)

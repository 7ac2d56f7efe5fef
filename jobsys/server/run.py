"""Running the app: uvicorn, its workers, TLS, and logs through jobsys's redacting formatter.

uvicorn (the ASGI server FastAPI's authors recommend, maintained by the same
team as Starlette) runs `app_from_settings` in each of its worker processes.
It logs through the root logger that `jobsys.logs.setup_logging` set up, so
every line (access lines included) is redacted; a request's token is in a
header, which uvicorn never logs, and a token pasted anywhere else in a
request line is masked by `jobsys.display.redact`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from jobsys.errors import InvalidInput
from jobsys.logs import setup_logging
from jobsys.server.app import create_app
from jobsys.settings import get_settings

# Seconds a worker is given to finish its requests on SIGTERM (streams included).
GRACEFUL_S = 30
# Requests in progress per worker process past which new ones get 503.
MAX_CONCURRENT = 1_000


def app_from_settings() -> FastAPI:
    """The app factory uvicorn calls in each worker process (logging set up first:
    a worker process started by uvicorn does not inherit the CLI's)."""
    settings = get_settings()
    secrets = [s.get_secret_value() for s in (settings.secret, settings.secret_previous) if s]
    setup_logging(settings.log_format, settings.log_level, secrets)
    return create_app(settings)


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, tls: bool, plain_http: bool) -> None:
    """Refuse to send bearer tokens in clear text over a network unless asked to."""
    if tls or plain_http or is_loopback(host):
        return
    raise InvalidInput(
        f"--host {host} without TLS would carry tokens in clear text: give --tls-cert and "
        "--tls-key, or put a TLS reverse proxy in front (deploy/) and pass --plain-http"
    )


def serve(
    host: str,
    port: int,
    workers: int = 1,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    plain_http: bool = False,
) -> None:
    """Serve the API until SIGTERM/SIGINT (graceful: running requests finish)."""
    if (tls_cert is None) != (tls_key is None):
        raise InvalidInput("give both --tls-cert and --tls-key, or neither")
    check_exposure(host, tls_cert is not None, plain_http)
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise InvalidInput(f"{path}: no such file")
    uvicorn.run(
        "jobsys.server.run:app_from_settings",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        # jobsys's handlers (redacting) are on the root logger already.
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_S,
        limit_concurrency=MAX_CONCURRENT,
    )

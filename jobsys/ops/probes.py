"""Probes of the services jobsys talks to: is it up, and if not, why, in one line.

Shared by `jobsys doctor` and the dev tooling that starts local servers
(`devtools/`), so both answer the same way, in one line that never shows a
password (jobsys.display).

Every probe returns None when the service answers healthily, else the
reason (one line); a probe never raises.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import psycopg
import redis

from jobsys.display import host_port, nats_servers, one_line, redact

# Long enough for a loaded machine, short enough for `doctor` to answer at once.
PROBE_TIMEOUT_S = 2.0
DEFAULT_PORTS = {"postgres": 5432, "redis": 6379, "nats": 4222}
LOCAL_HOST = "127.0.0.1"


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


def probe_postgres(url: str, dbname: str | None = "postgres") -> str | None:
    """Can we log in? By default to the maintenance database (the target may not exist yet)."""
    try:
        conninfo = psycopg.conninfo.make_conninfo(url, dbname=dbname) if dbname else url
        with psycopg.connect(conninfo, connect_timeout=int(PROBE_TIMEOUT_S), autocommit=True):
            return None
    except Exception as exc:  # any failure to talk to it means "not healthy"
        return one_line(exc)


def probe_redis(url: str, **connection: Any) -> str | None:
    """Does Redis answer a ping? `connection`: more redis-py options (TLS files)."""
    try:
        client = redis.Redis.from_url(
            url,
            socket_timeout=PROBE_TIMEOUT_S,
            socket_connect_timeout=PROBE_TIMEOUT_S,
            **connection,
        )
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return one_line(exc)
    return None


def nats_info(url: str) -> dict[str, Any] | str:
    """The INFO a NATS server greets every TCP client with, or why there is none.

    It says whether JetStream is on, the cluster's name and its servers'
    client URLs; reading it is cheaper than a full client handshake.
    """
    host, port = host_port(url, DEFAULT_PORTS["nats"])
    try:
        with socket.create_connection((host or LOCAL_HOST, port), timeout=PROBE_TIMEOUT_S) as conn:
            try:
                line = conn.makefile("rb").readline(1 << 16)
            except TimeoutError:
                return "no INFO greeting: not a NATS server"
    except Exception as exc:
        return one_line(exc)
    if not line.startswith(b"INFO "):
        return "not a NATS server"
    try:
        info = json.loads(line[5:])
    except ValueError:
        return "not a NATS server"
    return info if isinstance(info, dict) else "not a NATS server"


def nats_cluster_size(url: str) -> int | None:
    """How many servers the cluster of `url`'s first server has (1: not a cluster)."""
    info = nats_info(nats_servers(url)[0])
    if isinstance(info, str):
        return None
    if not info.get("cluster"):
        return 1
    return len(info.get("connect_urls") or []) or None


def probe_nats_server(url: str) -> str | None:
    """Is one server a NATS server with JetStream on?"""
    info = nats_info(url)
    if isinstance(info, str):
        return info
    if not info.get("jetstream"):
        return "JetStream is not enabled"
    return None


def probe_nats(url: str) -> str | None:
    """Every server of the setting answers with JetStream on (the first reason otherwise)."""
    for server in nats_servers(url):
        error = probe_nats_server(server)
        if error is not None:
            return error if "," not in url else f"{redact(server)}: {error}"
    return None


PROBES = {"postgres": probe_postgres, "redis": probe_redis, "nats": probe_nats}


def probe(key: str, url: str) -> str | None:
    """None when service `key` (postgres, redis, nats) answers healthily at `url`, else why not."""
    return PROBES[key](url)

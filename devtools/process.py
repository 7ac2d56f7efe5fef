"""Processes and ports of local servers: spawn, find, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from jobsys.ops.probes import LOCAL_HOST, probe

WAIT_S = 20.0
# SIGTERM first; a server still running this long after is killed.
STOP_TIMEOUT_S = 10.0


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:port."""
    with socket.socket() as sock:
        try:
            sock.bind((LOCAL_HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on right now."""
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
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def spawn(cmd: list[str], log: Path, **kwargs: object) -> subprocess.Popen[bytes]:
    """Start a server detached from this process, so it outlives ``up``."""
    with log.open("ab") as out:
        return subprocess.Popen(  # type: ignore[call-overload]
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, **kwargs
        )


def log_tail(log: Path) -> str:
    """`` (log PATH: last line)`` for an error message, or ``""``."""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f" (log {log}: {lines[-1].strip()})" if lines else ""

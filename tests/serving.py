"""A real `jobsys serve` on a free port for the tests, and httpx clients that remember
which routes they called (so a test can show that every route of the OpenAPI
document was called)."""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from devtools.process import free_port
from jobsys.ops.runner import serve_cmd

# Up to a minute for a loaded machine to import and start the server.
START_TIMEOUT_S = 60.0
# Every (method, path) any test client sent, across the session.
CALLED: set[tuple[str, str]] = set()


def _remember(request: httpx.Request) -> None:
    CALLED.add((request.method, request.url.path))


def route_pattern(template: str) -> re.Pattern[str]:
    """``/api/jobs/{job_id}`` -> a regex matching its paths."""
    return re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$")


class Server:
    """`jobsys serve` as a child process, with its log in `log_path`."""

    def __init__(
        self,
        log_dir: Path,
        env: dict[str, str] | None = None,
        extra: tuple[str, ...] = (),
        ca: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.scheme = "https" if ca is not None else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.extra = extra
        self.ca = ca
        self.log_path = log_dir / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def verify(self) -> ssl.SSLContext | bool:
        """What a client checks the server's certificate with."""
        return ssl.create_default_context(cafile=str(self.ca)) if self.ca else True

    def start(self) -> Server:
        """Start it and wait until /healthz answers 200."""
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                serve_cmd(self.port, "127.0.0.1", *self.extra),
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jobsys serve exited: {self.log()[-2000:]}")
            try:
                answer = httpx.get(f"{self.url}/healthz", timeout=2, verify=self.verify())
                if answer.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"jobsys serve did not answer: {self.log()[-2000:]}")

    def client(self, token: str | None = None, **headers: str) -> httpx.Client:
        """A client of this server sending `token` (if any) as a bearer token."""
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=120,
            verify=self.verify(),
            event_hooks={"request": [_remember]},
        )

    def call(self, token: str | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request with a fresh client."""
        with self.client(token) as client:
            return client.request(method, path, **kwargs)

    def log(self) -> str:
        """Everything the server wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM (graceful), SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

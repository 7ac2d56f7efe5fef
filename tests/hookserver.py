"""A real local HTTP server that receives completion hooks, for tests.

It answers the first `fail_first` POSTs with 500 and the rest with 200, and
records every request (headers, body, the answer given).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    """One request the server got."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    answered: int


class HookServer:
    """`with HookServer(fail_first=2) as server:` ... `server.url`, `server.received`."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.received: list[Received] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with owner._lock:
                    code = 500 if len(owner.received) < owner.fail_first else 200
                    owner.received.append(
                        Received(self.path, dict(self.headers.items()), body, code)
                    )
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"no" if code == 500 else b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Where to POST."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/jobsys"

    def accepted(self) -> list[Received]:
        """The requests answered 2xx."""
        with self._lock:
            return [r for r in self.received if r.answered < 300]

    def wait_accepted(self, n: int = 1, timeout: float = 60.0) -> list[Received]:
        """Wait until `n` requests were answered 2xx; returns them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.accepted()
            if len(got) >= n:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{len(self.accepted())} hook(s) accepted, wanted {n}: "
                             f"{self.received}")  # fmt: skip

    def __enter__(self) -> HookServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

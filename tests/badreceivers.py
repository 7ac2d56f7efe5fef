"""Hook receivers that misbehave, for tests and the chaos suite: a real local HTTP server.

| mode | what it does with each POST |
|---|---|
| `trickle` | answers 200 with a huge Content-Length, then sends one byte every TRICKLE_EVERY_S |
| `trickle_head` | sends its status line, then one byte of a header every TRICKLE_EVERY_S |
| `hang` | reads the request and never answers |
| `huge` | answers `status` with a body of `huge_bytes`, as fast as it can |

Every connection is held until the client goes away or the server stops.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Mode = Literal["trickle", "trickle_head", "hang", "huge"]

TRICKLE_EVERY_S = 2.0
# What a trickling receiver announces (and never sends).
TRICKLE_LENGTH = 10**12
CHUNK = b"x" * (1 << 20)


class BadReceiver:
    """`with BadReceiver("trickle") as r:` ... `r.url`, `r.requests`, `r.open`."""

    def __init__(self, mode: Mode, huge_bytes: int = 0, status: int = 200) -> None:
        self.mode = mode
        self.huge_bytes = huge_bytes
        self.status = status
        self.requests = 0
        # Connections whose handler still runs (trickling, hanging, sending).
        self.open = 0
        # Body bytes the client took before it went away.
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                with owner._lock:
                    owner.requests += 1
                    owner.open += 1
                try:
                    owner._answer(self)
                except OSError:
                    pass  # the client went away: what a deadline does
                finally:
                    with owner._lock:
                        owner.open -= 1
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        if self.mode == "hang":
            # Said nothing; notice the client leaving (a read returns b"").
            h.connection.settimeout(0.5)
            while not self._stop.is_set():
                try:
                    if h.connection.recv(1) == b"":
                        return
                except TimeoutError:
                    continue
            return
        if self.mode == "trickle_head":
            h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            h.wfile.flush()
            while not self._stop.wait(TRICKLE_EVERY_S):
                h.wfile.write(b"x")
                h.wfile.flush()
                self._count(1)
            return
        h.send_response(self.status)
        length = TRICKLE_LENGTH if self.mode == "trickle" else self.huge_bytes
        h.send_header("Content-Length", str(length))
        h.end_headers()
        h.wfile.flush()
        if self.mode == "trickle":
            while not self._stop.wait(TRICKLE_EVERY_S):
                h.wfile.write(b"x")
                h.wfile.flush()
                self._count(1)
            return
        left = self.huge_bytes
        while left > 0 and not self._stop.is_set():
            part = CHUNK[: min(left, len(CHUNK))]
            h.wfile.write(part)
            self._count(len(part))
            left -= len(part)
        h.wfile.flush()

    def _count(self, n: int) -> None:
        with self._lock:
            self.sent += n

    @property
    def url(self) -> str:
        """Where to POST."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/{self.mode}"

    def wait_requests(self, n: int, timeout: float) -> None:
        """Until `n` requests came in."""
        deadline = time.monotonic() + timeout
        while self.requests < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.requests} request(s) to the {self.mode} receiver, "
                                     f"wanted {n}")  # fmt: skip
            time.sleep(0.05)

    def __enter__(self) -> BadReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop answering and close every connection."""
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

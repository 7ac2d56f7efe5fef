"""A sync facade over one NATS connection per process, on a background event loop.

Sync code (Dramatiq actors, the CLI, the reconciler) runs its NATS calls
through `bridge()`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import TypeVar

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from jobsys.loops import new_event_loop
from jobsys.nats.admin import tasks_of_messages
from jobsys.nats.connect import connect, jetstream
from jobsys.nats.subjects import JobNames
from jobsys.settings import get_settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long the stream lookups of one result batch may take (`lookup_tasks`).
LOOKUP_TIMEOUT_S = 30.0

# Run (on a thread of its own) each time a bridge's connection is back after
# a loss; set by `on_reconnect`.
_reconnect_hook: Callable[[], object] | None = None


def on_reconnect(hook: Callable[[], object] | None) -> None:
    """Run `hook` each time this process's NATS connection comes back after a
    loss (the worker asks for a reconcile pass: the server may have lost
    streams). It runs on a thread of its own, never on the NATS loop."""
    global _reconnect_hook
    _reconnect_hook = hook


def _reconnected() -> None:
    hook = _reconnect_hook
    if hook is not None:
        threading.Thread(target=hook, name="jobsys-reconnected", daemon=True).start()


class NatsBridge:
    """A sync facade over one NATS connection living on a background event loop."""

    def __init__(self, url: str | None = None) -> None:
        self._url = url or get_settings().nats_url
        self._loop = new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="jobsys-nats", daemon=True
        )
        self._thread.start()
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._connecting: asyncio.Lock | None = None

    async def _conn(self) -> tuple[NATS, JetStreamContext]:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._nc is None or self._nc.is_closed:
                self._nc = await connect(
                    self._url, name=f"jobsys-{os.getpid()}", reconnected=_reconnected
                )
                self._js = jetstream(self._nc)
        assert self._js is not None
        return self._nc, self._js

    def run(self, fn: Callable[[NATS, JetStreamContext], Awaitable[T]], timeout: float = 60.0) -> T:
        """Run ``fn(nc, js)`` on the bridge's loop and return its result.

        Past `timeout` the call is cancelled on the loop (and TimeoutError
        raised): work its caller gave up on does not go on in the background.
        """
        future = self.submit(fn)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def submit(self, fn: Callable[[NATS, JetStreamContext], Awaitable[T]]) -> Future[T]:
        """Start ``fn(nc, js)`` on the bridge's loop; the future holds its result
        (the caller goes on meanwhile: a fill writes one chunk to Postgres while
        the next is published). A caller that stops waiting cancels it."""

        async def call() -> T:
            nc, js = await self._conn()
            return await fn(nc, js)

        return asyncio.run_coroutine_threadsafe(call(), self._loop)

    def close(self) -> None:
        """Drain the connection and stop the loop."""

        async def shutdown() -> None:
            if self._nc is not None and not self._nc.is_closed:
                # flush + close: drain would wait up to 30 s on subscriptions.
                with contextlib.suppress(Exception):
                    await self._nc.flush(timeout=5)
                await self._nc.close()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        except Exception:
            log.debug("nats bridge close failed", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)


_bridge: NatsBridge | None = None
_bridge_pid: int | None = None
_bridge_lock = threading.Lock()


def bridge() -> NatsBridge:
    """This process's NATS bridge (re-created after a fork)."""
    global _bridge, _bridge_pid
    with _bridge_lock:
        if _bridge is None or _bridge_pid != os.getpid():
            _bridge = NatsBridge()
            _bridge_pid = os.getpid()
        return _bridge


def close_bridge() -> None:
    """Close this process's bridge if it has one."""
    global _bridge, _bridge_pid
    with _bridge_lock:
        if _bridge is not None and _bridge_pid == os.getpid():
            _bridge.close()
        _bridge = None
        _bridge_pid = None


def lookup_tasks(job_id: int, seqs: Sequence[int]) -> Mapping[int, tuple[int, int] | None]:
    """Which task each of these messages of the job's stream is (the `Lookup` that
    jobsys.recording.binding is given), through this process's bridge."""
    names = JobNames.of(get_settings().namespace, job_id)
    return bridge().run(lambda nc, js: tasks_of_messages(js, names, seqs), timeout=LOOKUP_TIMEOUT_S)

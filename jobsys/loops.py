"""The event loops jobsys runs its asyncio code on: uvloop's where it is installed.

The NATS client of a worker (jobsys.nats.bridge) and the whole of a processor
(jobsys.processor) live on one event loop each, and for a small job most of
their time is the loop's own bookkeeping: callbacks, futures, socket reads.
uvloop (libuv) does that work in C; on a small-jobs bench it cut about 1 ms
of the worker's and processor's CPU per job. JOBSYS_UVLOOP=false runs the
standard library's loop instead (where uvloop is not installed, e.g. Windows,
that is what runs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from jobsys.settings import get_settings

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

try:
    import uvloop

    _UVLOOP: LoopFactory | None = uvloop.new_event_loop
except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
    _UVLOOP = None

T = TypeVar("T")


def _factory() -> LoopFactory:
    if _UVLOOP is not None and get_settings().uvloop:
        return _UVLOOP
    return asyncio.new_event_loop


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop (not set as the thread's current one)."""
    return _factory()()


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on a loop from `new_event_loop`."""
    with asyncio.Runner(loop_factory=_factory()) as runner:
        return runner.run(main)

"""A processor's stop switch: asked from any thread (a signal handler, a test, a
side task that died), awaited in the processor's event loop."""

from __future__ import annotations

import asyncio
import threading


class StopSwitch:
    """Thread-safe "stop now" for an asyncio service."""

    def __init__(self) -> None:
        self._asked = threading.Event()
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def ask(self) -> None:
        """Ask the service to stop (from any thread; idempotent)."""
        self._asked.set()
        event, loop = self._event, self._loop
        if event is not None and loop is not None:
            loop.call_soon_threadsafe(event.set)

    def asked(self) -> bool:
        """Whether a stop was asked for."""
        return self._asked.is_set()

    def bind(self) -> None:
        """Tie the switch to the running loop (a stop asked before counts)."""
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        if self._asked.is_set():
            self._event.set()

    async def wait(self) -> None:
        """Until a stop is asked; `bind` first."""
        assert self._event is not None, "StopSwitch.wait before bind"
        await self._event.wait()

"""Thread execution (`jobsys process --pool threads`): slots are threads of the processor.

For I/O-bound pipelines that need no isolation. What it gives up: a
pipeline that kills its process kills the processor with every task it
held (each is delivered again); a call past its time limit cannot be
stopped -- its task is handed back to NATS at the deadline and the thread
is abandoned to finish on its own (a new one takes its place); pipelines
share the processor's memory and GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from typing import Any

from jobsys.processor.calls import END, Runner
from jobsys.processor.execute import Call, Execution, SlotBase
from jobsys.processor.output import install as install_output

log = logging.getLogger(__name__)

# One Runner for every thread of the processor: a batch pipeline's setup()
# runs once per process, as with child processes.
_RUNNER = Runner()


class ThreadSlot(SlotBase):
    """One pipeline thread (see the module docstring)."""

    def __init__(self, execution: Execution, index: int) -> None:
        super().__init__(execution)
        self.index = index
        self.abandoned = False
        self._calls: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self._pending: list[tuple[int, int, str, Any, int]] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Start the thread."""
        self._loop = asyncio.get_running_loop()
        # What pipelines print or log on these threads is labelled in the log.
        install_output(configure_logging=False)
        self._thread = threading.Thread(
            target=self._serve, name=f"jobsys-task-{self.index}", daemon=True
        )
        self._thread.start()
        self.ready = True
        self.execution.wake()

    def run(self, call: Call) -> None:
        """Queue `call` for the thread."""
        self._begin(call)
        self._calls.put(call)

    def _serve(self) -> None:
        while True:
            call = self._calls.get()
            if call is None or self.abandoned:
                return
            payloads = [t.msg.data for t in call.tasks]

            def report(index: int, kind: str, value: Any, size: int, call: Call = call) -> None:
                self._post(call, index, kind, value, size)

            _RUNNER.run(
                call.run.pipeline,
                payloads,
                self.execution.max_result_bytes,
                report,
                call.run.job_id,
                tuple(t.task_no for t in call.tasks),
            )
            self._post(call, END, "", None, 0)

    def _post(self, call: Call, index: int, kind: str, value: Any, size: int) -> None:
        # From the thread: outcomes go to the event loop in bunches, one wakeup each.
        self._pending.append((call.serial, index, kind, value, size))
        if not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for serial, index, kind, value, size in pending:
            self.on_frame(serial, index, kind, value, size)

    def on_frame(self, serial: int, index: int, kind: str, value: Any, size: int) -> None:
        """One frame of the running call; an abandoned thread's frames are ignored."""
        if not self.abandoned:
            super().on_frame(serial, index, kind, value, size)

    def kill(self, reason: str) -> None:
        """A thread cannot be stopped: abandon it, charge its call, start another."""
        call, self.call = self.call, None
        self.abandoned = True
        self.ready = False
        self.deadline = float("inf")
        log.warning(
            "pipeline thread abandoned past its time limit; it runs on unobserved",
            extra={"job_id": call.run.job_id if call else None, "reason": reason},
        )
        self.execution.replace_slot(self, ThreadSlot(self.execution, self.index))
        if call is not None:
            self.execution.died(call, reason)

    async def close(self, grace_s: float) -> None:
        """Let the running call end (up to `grace_s`); the thread then exits."""
        deadline = time.monotonic() + grace_s
        while self.call is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._calls.put(None)

"""Isolated execution: each slot is a child process, replaced when it dies.

Children are forked from a multiprocessing *forkserver* that has jobsys
already imported, so a replacement is ready in milliseconds and shares the
server's memory pages. Each child talks to the processor over its own
socket pair, in frames (a 4-byte length, then a pickle):

- processor -> child: one call, ``(serial, pipeline, max_result_bytes, [payload bytes],
  job_id, (task numbers))``;
- child -> processor: ``(serial, index, kind, value)`` for each task's outcome
  as soon as it is known, ``(serial, RAISED, "raised", (permanent, why))`` if a
  batch call raised as a whole, then ``(serial, END, "", None)``.

An outcome is written to the socket before the next task starts, so when a
child dies, every outcome it reported stands and the first task without one
is the one it was running. A child dies with its parent (PR_SET_PDEATHSIG),
and ignores SIGINT: the processor decides when children stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import pickle
import signal
import socket
import struct
import threading
import time
from multiprocessing.context import ForkServerContext
from typing import Any, cast

from jobsys.processor.calls import END, Runner
from jobsys.processor.execute import Call, Execution, SlotBase
from jobsys.processor.output import install as install_output

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")
# Modules the forkserver imports once, so every child starts with them.
PRELOAD = ["jobsys.processor.children", "jobsys.pipelines"]
# Waiting for a dead child's exit status (it follows the socket's EOF).
EXIT_STATUS_WAIT_S = 5.0
# One turn of waiting for an exit status while holding the status lock.
JOIN_TURN_S = 0.05

# A child's exit status comes from the forkserver on a pipe that only one
# reader may drain: multiprocessing's Process.start() polls every live child
# (its `_cleanup`), so a start on one thread racing a join on another made
# one of them read EOF, and the death was recorded as "exit code 255". Starts
# and status reads take turns.
_STATUS_LOCK = threading.Lock()


def _start(proc: multiprocessing.process.BaseProcess) -> None:
    with _STATUS_LOCK:
        proc.start()


def _join(proc: multiprocessing.process.BaseProcess, timeout: float) -> int | None:
    """Wait up to `timeout` for the child to end; its exit code (None: still running)."""
    # Waited for in short turns, so a start elsewhere is not held up long.
    deadline = time.monotonic() + timeout
    while True:
        with _STATUS_LOCK:
            proc.join(JOIN_TURN_S)
            code = proc.exitcode
        if code is not None or time.monotonic() >= deadline:
            return code


PR_SET_PDEATHSIG = 1

_context: ForkServerContext | None = None


def forkserver() -> ForkServerContext:
    """The multiprocessing context children are made with (one forkserver per processor)."""
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        assert isinstance(ctx, ForkServerContext)
        ctx.set_forkserver_preload(PRELOAD)
        _context = ctx
    return _context


def describe_exit(code: int | None) -> str:
    """How a child ended, in words: the signal's number and name, or its exit code."""
    if code is None:
        return "execution process vanished"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"execution process killed by signal {-code} ({name})"
    return f"execution process exited with code {code}"


# -- the child's side ----------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            return None
        got += k
    return bytes(buf)


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def child_main(sock: socket.socket) -> None:
    """An execution process: run calls from `sock` until the processor closes it."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # What pipelines print or log here reaches the processor's log, labelled.
    install_output(configure_logging=True)
    runner = Runner()
    pack, dumps = _HEADER.pack, pickle.dumps
    while True:
        header = _recv_exact(sock, _HEADER.size)
        if header is None:
            return
        body = _recv_exact(sock, _HEADER.unpack(header)[0])
        if body is None:
            return
        serial, name, max_bytes, payloads, job_id, task_nos = pickle.loads(body)

        def report(index: int, kind: str, value: Any, size: int, serial: int = serial) -> None:
            frame = dumps((serial, index, kind, value, size), protocol=5)
            sock.sendall(pack(len(frame)) + frame)

        runner.run(name, payloads, max_bytes, report, job_id, task_nos)
        report(END, "", None, 0)


# -- the processor's side ------------------------------------------------------


class _Frames(asyncio.Protocol):
    """Splits the child's byte stream into frames for its slot."""

    def __init__(self, slot: ChildSlot) -> None:
        self.slot = slot
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        size = _HEADER.size
        pos = 0
        while len(buf) - pos >= size:
            (n,) = _HEADER.unpack_from(buf, pos)
            if len(buf) - pos - size < n:
                break
            frame = pickle.loads(buf[pos + size : pos + size + n])
            pos += size + n
            self.slot.on_frame(*frame)
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.on_lost()


class ChildSlot(SlotBase):
    """One execution process (see the module docstring)."""

    def __init__(self, execution: Execution, index: int) -> None:
        super().__init__(execution)
        self.index = index
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._transport: asyncio.Transport | None = None
        self._kill_reason: str | None = None
        self._closing = False
        self.lost = asyncio.Event()

    async def start(self) -> None:
        """Fork a fresh child and connect to it."""
        loop = asyncio.get_running_loop()
        mine, theirs = socket.socketpair()
        proc = forkserver().Process(
            target=child_main, args=(theirs,), name=f"jobsys-exec-{self.index}", daemon=True
        )
        # start() talks to the forkserver (and starts it the first time).
        await loop.run_in_executor(None, _start, proc)
        theirs.close()
        self._proc = proc
        self._kill_reason = None
        self.lost = asyncio.Event()
        transport, _ = await loop.create_unix_connection(lambda: _Frames(self), sock=mine)
        # A socket transport (asyncio's, or uvloop's, which is not a subclass).
        self._transport = cast(asyncio.Transport, transport)
        self.ready = True
        self.execution.wake()

    @property
    def pid(self) -> int | None:
        """The child's process id (None before it started)."""
        return self._proc.pid if self._proc is not None else None

    def run(self, call: Call) -> None:
        """Send `call` to the child."""
        assert self._transport is not None and self.call is None
        self._begin(call)
        frame = pickle.dumps(
            (
                call.serial,
                call.run.pipeline,
                self.execution.max_result_bytes,
                [t.msg.data for t in call.tasks],
                call.run.job_id,
                tuple(t.task_no for t in call.tasks),
            ),
            protocol=5,
        )
        self._transport.write(_HEADER.pack(len(frame)) + frame)

    def kill(self, reason: str) -> None:
        """SIGKILL the child (time limit); it is replaced, its call charged `reason`."""
        if self._proc is not None and self._kill_reason is None:
            self._kill_reason = reason
            self.deadline = float("inf")
            with contextlib.suppress(Exception):
                self._proc.kill()

    def on_lost(self) -> None:
        """The child's socket closed: it died (or was told to stop)."""
        self.ready = False
        self.lost.set()
        if not self._closing:
            self.execution.spawn(self._replace(), f"replace execution process {self.index}")

    async def _replace(self) -> None:
        call, self.call = self.call, None
        self.deadline = float("inf")
        proc = self._proc
        code: int | None = None
        if proc is not None:
            loop = asyncio.get_running_loop()
            code = await loop.run_in_executor(None, _join, proc, EXIT_STATUS_WAIT_S)
        reason = self._kill_reason or describe_exit(code)
        if call is not None:
            self.execution.died(call, reason)
        else:
            log.warning("idle execution process died", extra={"reason": reason})
        if not self._closing and not self.execution.stopping:
            await self.start()

    async def close(self, grace_s: float) -> None:
        """Let the running call end (up to `grace_s`), then stop the child."""
        deadline = time.monotonic() + grace_s
        while self.call is not None and time.monotonic() < deadline and not self.lost.is_set():
            await asyncio.sleep(0.02)
        self._closing = True
        if self._transport is not None:
            self._transport.close()  # the child reads EOF and exits
        proc = self._proc
        if proc is None:
            return
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, _join, proc, 1.0) is None:
            proc.kill()
            await loop.run_in_executor(None, _join, proc, 1.0)

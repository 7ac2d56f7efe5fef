"""What a pipeline prints or logs while it runs a task goes to the processor's log,
labelled with the job and task ids.

An execution slot (a child process, or a thread of the processor) runs each
task inside `running(job_id, tasks)`. While it does, every log record made in
that process or thread gets `job_id` and `task` (or `tasks`, for a batch
call) fields, and `sys.stdout` / `sys.stderr` are line writers that turn each
line printed into a record of the logger ``jobsys.pipeline`` (stdout: INFO,
stderr: WARNING), with the same fields. Outside a task they write through to
the stream they replaced. Records go to the slot's stderr, which is the
processor's: its log.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
from contextvars import ContextVar
from typing import Any, TextIO

from jobsys.logs import setup_logging
from jobsys.settings import get_settings

# (job id, its task numbers in the running call) while a task runs here.
_RUNNING: ContextVar[tuple[int, tuple[int, ...]] | None] = ContextVar("jobsys_task", default=None)
# A printed line longer than this is logged in pieces.
MAX_LINE_CHARS = 8_000
PIPELINE_LOGGER = "jobsys.pipeline"

_installed = False
# Set while this thread turns a line into a record: a handler that writes to
# a replaced stream (set up after `install`) must not loop back here.
_emitting = threading.local()


def ids() -> dict[str, Any]:
    """The fields naming the task running here: job_id and task (or tasks); {} if none."""
    running = _RUNNING.get()
    if running is None:
        return {}
    job_id, tasks = running
    if len(tasks) == 1:
        return {"job_id": job_id, "task": tasks[0]}
    return {"job_id": job_id, "tasks": list(tasks)}


class running:  # lowercase: it reads as the function it replaced
    """The pipeline runs task(s) `tasks` of `job_id` (no label when `job_id` is None).

    A class, not a generator: it is entered once per task, and a
    `contextlib.contextmanager` cost ~1 us of an execution process's ~6 us per
    echo task (issue 26)."""

    __slots__ = ("_label", "_token")

    def __init__(self, job_id: int | None, tasks: tuple[int, ...]) -> None:
        self._label = (job_id, tasks) if job_id is not None else None

    def __enter__(self) -> None:
        self._token = _RUNNING.set(self._label)

    def __exit__(self, *exc: object) -> None:
        _RUNNING.reset(self._token)


class _TaskFields(logging.Filter):
    """Adds the running task's ids to every record that does not name a job already."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "job_id" not in vars(record):
            for key, value in ids().items():
                setattr(record, key, value)
        return True


class _Lines(io.TextIOBase):
    """A text stream whose lines, written while a task runs, become log records."""

    def __init__(self, through: TextIO, level: int, stream: str) -> None:
        self._through = through
        self._level = level
        self._stream = stream
        self._buf = ""
        self._log = logging.getLogger(PIPELINE_LOGGER)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if _RUNNING.get() is None or getattr(_emitting, "on", False):
            self._flush_buf()
            return self._through.write(text)
        self._buf += text
        while "\n" in self._buf or len(self._buf) > MAX_LINE_CHARS:
            line, sep, rest = self._buf.partition("\n")
            if not sep:
                line, rest = self._buf[:MAX_LINE_CHARS], self._buf[MAX_LINE_CHARS:]
            self._buf = rest
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        self._flush_buf()
        with contextlib.suppress(Exception):
            self._through.flush()

    def _flush_buf(self) -> None:
        if self._buf:
            line, self._buf = self._buf, ""
            self._emit(line)

    def _emit(self, line: str) -> None:
        if not line.strip():
            return
        _emitting.on = True
        try:
            self._log.log(self._level, line.rstrip(), extra={"stream": self._stream})
        finally:
            _emitting.on = False

    def fileno(self) -> int:
        return self._through.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._through, "encoding", "utf-8")


def install(configure_logging: bool) -> None:
    """Label what pipelines print and log in this process (once). A child process
    also sets up jobsys logging (`configure_logging`): it starts without any."""
    global _installed
    if _installed:
        return
    _installed = True
    if configure_logging:
        settings = get_settings()
        secrets = [s.get_secret_value() for s in (settings.secret, settings.secret_previous) if s]
        setup_logging(settings.log_format, settings.log_level, secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_TaskFields())
    sys.stdout = _Lines(sys.stdout, logging.INFO, "stdout")
    sys.stderr = _Lines(sys.stderr, logging.WARNING, "stderr")

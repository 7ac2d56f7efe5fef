"""Pause points: let a crash test stop a real process at an exact instant, then kill it.

A crash test starts a process (a worker, say) with ``JOBSYS_PAUSE_AT=<point>``
and ``JOBSYS_PAUSE_FILE=<path>`` in its environment. When that process
reaches ``pause(Pause.<POINT>)`` it writes its pid to the file and sleeps, so
the test knows the process is exactly there and can SIGKILL it: a crash
window that is microseconds wide becomes reachable every time. A test that
deletes the file instead lets the process go on from there (a frozen process
that wakes).

With ``JOBSYS_PAUSE_JOB=<job id>`` too, only that job's work pauses there:
the test's database may hold other tests' jobs that the process serves as
well, and a pause in one of those would hold the wrong rows.

The environment is read once, when this module is imported; in production
(unset) a pause point is one comparison with None.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# A paused process is meant to be killed; if nobody does, it goes on after this.
PAUSE_MAX_S = 600.0
# How often a paused process looks whether its pause file was deleted.
RELEASE_POLL_S = 0.1


class Pause(StrEnum):
    """Every instant a test can stop a process at (the value is what JOBSYS_PAUSE_AT names)."""

    # A job was just made final and committed; its follow-up (stream deletion,
    # hook delivery) is not yet requested (jobsys.lifecycle.finalize).
    AFTER_FINAL_COMMIT = "after_final_commit"
    # A hook delivery is claimed and not yet sent (jobsys.hooks.deliver).
    BEFORE_HOOK_SEND = "before_hook_send"
    # A fill holds its job's bootstrap lock and is about to read and publish
    # its next chunk of tasks (jobsys.bootstrap.fill).
    BETWEEN_FILL_CHUNKS = "between_fill_chunks"
    # A result batch's counts are written and not committed: its transaction
    # holds the job's row (jobsys.recording.counting).
    IN_RESULTS_TRANSACTION = "in_results_transaction"


def _from_env(name: str, parse: Callable[[str], T], names_no: str) -> T | None:
    """The environment variable `name` as `parse` reads it; None if unset, or
    (with a warning that it names no `names_no`) if `parse` refuses it."""
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return parse(value)
    except ValueError:
        log.warning("pause setting names nothing known",
                    extra={"setting": name, "value": value, "expected": names_no})  # fmt: skip
        return None


_AT = _from_env("JOBSYS_PAUSE_AT", Pause, "pause point")
_JOB = _from_env("JOBSYS_PAUSE_JOB", int, "job")
_FILE = os.environ.get("JOBSYS_PAUSE_FILE")


def pause(point: Pause, job_id: int | None = None) -> None:
    """Sleep here (up to PAUSE_MAX_S) if this process was started to pause at `point`
    (and, with JOBSYS_PAUSE_JOB, only in the work of that job: `job_id`)."""
    if _AT is not point:
        return
    if _JOB is not None and job_id != _JOB:
        return
    log.warning("paused for a test", extra={"pause_point": str(point), "pid": os.getpid()})
    if not _FILE:
        time.sleep(PAUSE_MAX_S)
        return
    marker = Path(_FILE)
    marker.write_text(str(os.getpid()))
    end = time.monotonic() + PAUSE_MAX_S
    while marker.exists() and time.monotonic() < end:
        time.sleep(RELEASE_POLL_S)

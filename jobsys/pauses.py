"""Pause points: let a test stop a real process at an exact instant, then kill it.

A crash test sets ``JOBSYS_PAUSE_AT=<name>`` and ``JOBSYS_PAUSE_FILE=<path>``
in the environment of a process it starts (a worker, say). When that process
reaches ``pause_point("<name>")`` it writes its pid to the file and sleeps,
so the test knows the process is exactly there and can SIGKILL it: a crash
window that is microseconds wide becomes reachable every time. Unset (as in
production), a pause point is one dictionary lookup.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

# A paused process is meant to be killed; if nobody does, it goes on after this.
PAUSE_MAX_S = 600.0


def pause_point(name: str) -> None:
    """Sleep here (up to PAUSE_MAX_S) if the environment asks to pause at `name`."""
    if os.environ.get("JOBSYS_PAUSE_AT") != name:
        return
    marker = os.environ.get("JOBSYS_PAUSE_FILE")
    log.warning("paused for a test", extra={"pause_point": name, "pid": os.getpid()})
    if marker:
        Path(marker).write_text(str(os.getpid()))
    time.sleep(PAUSE_MAX_S)

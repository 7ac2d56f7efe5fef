"""LocalSystem.stop leaves no child running, even when interrupted while it waits.

A second Ctrl-C during a bench's shutdown interrupted the wait for a
processor that was slow to stop (10,000 feeds to drop): the processor was
never killed, served the bench's namespace for an hour and made its
presence bucket again after every clean-up."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from types import FrameType

import pytest

from jobsys.ops.runner import LocalSystem

# A child that ignores SIGTERM, as a process busy shutting down looks.
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)",
]


def test_an_interrupted_stop_still_kills_every_child(tmp_path: Path) -> None:
    system = LocalSystem(workers=0, processors=0, log_dir=tmp_path)
    (child,) = system.add_group("stubborn", STUBBORN)
    time.sleep(0.5)  # it has set its handler

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            system.stop(timeout=30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert child.wait(5) == -signal.SIGKILL

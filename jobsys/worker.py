"""`jobsys worker`: Dramatiq workers for the jobsys actors, supervised.

Dramatiq's own master process exits when one of its children is SIGKILLed
instead of replacing it (DESIGN.md). jobsys's supervisor restarts any child
that dies, so a Procfile `worker:` line survives a killed child. Each child
runs a Dramatiq `Worker` in-process with jobsys's structured logging.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)

# A child that keeps dying at start (bad config) should not spin the CPU.
RESTART_DELAY_S = 1.0
STOP_TIMEOUT_MS = 30_000


def run_worker(threads: int) -> None:
    """Run one Dramatiq worker in this process until SIGTERM/SIGINT."""
    import dramatiq

    import jobsys.actors  # noqa: F401 - declares the actors on the broker
    from jobsys.broker import CONTROL_QUEUE, RESULTS_QUEUE

    broker = dramatiq.get_broker()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker = dramatiq.Worker(broker, worker_threads=threads, queues={RESULTS_QUEUE, CONTROL_QUEUE})
    worker.start()
    log.info("worker started", extra={"threads": threads})
    stop.wait()
    log.info("worker stopping: finishing in-flight messages")
    # In-flight actors finish; prefetched messages go back to the queue.
    worker.stop(timeout=STOP_TIMEOUT_MS)
    broker.close()
    log.info("worker stopped")


def supervise(processes: int, threads: int) -> None:
    """Keep `processes` worker children alive; restart any that dies."""
    cmd = [sys.executable, "-m", "cli", "worker", "--processes", "1", "--threads", str(threads)]
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    children = [subprocess.Popen(cmd) for _ in range(processes)]
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    while not stopping.is_set():
        for i, child in enumerate(children):
            code = child.poll()
            if code is not None and not stopping.is_set():
                log.warning("worker child died; restarting", extra={"pid": child.pid, "code": code})
                time.sleep(RESTART_DELAY_S)
                children[i] = subprocess.Popen(cmd)
        stopping.wait(0.5)
    for child in children:
        child.wait()

"""`jobsys scheduler`: enqueue a reconcile pass every JOBSYS_RECONCILE_EVERY_S seconds.

A plain loop rather than periodiq: it adds no dependency, and periodiq
brings its own process model (a scheduler process with worker-style
middleware and cron expressions) for what is one message on one period.
If a tick cannot reach Redis, it logs and tries at the next tick; passes
that overlap (a slow pass, or cron's `jobsys reconcile` as well) are safe,
as each job is acted on under its own advisory lock.
"""

from __future__ import annotations

import logging
import signal
import threading

from jobsys.dramatiq.messages import send_reconcile
from jobsys.settings import Settings, get_settings

log = logging.getLogger(__name__)


def run_scheduler(
    settings: Settings | None = None,
    stop: threading.Event | None = None,
    max_ticks: int | None = None,
) -> int:
    """Send the `reconcile` actor a message now and every period until `stop`
    (or SIGTERM/SIGINT when run in the main thread); returns the messages sent."""
    s = settings or get_settings()
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    log.info("scheduler started", extra={"every_s": s.reconcile_every_s})
    sent = ticks = 0
    while not stop.is_set():
        try:
            send_reconcile()
            sent += 1
        except Exception as exc:
            log.warning("reconcile not enqueued", extra={"error": repr(exc)})
        ticks += 1
        if max_ticks is not None and ticks >= max_ticks:
            break
        stop.wait(s.reconcile_every_s)
    log.info("scheduler stopped", extra={"sent": sent})
    return sent

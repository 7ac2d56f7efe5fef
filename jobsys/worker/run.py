"""`jobsys worker`: Dramatiq workers for the jobsys actors, supervised.

Dramatiq's own master process exits when one of its children is SIGKILLed
instead of replacing it (DESIGN.md). jobsys's supervisor restarts any child
that dies, so a Procfile `worker:` line survives a killed child. Each child
runs Dramatiq in-process with jobsys's structured logging: one `Worker` of
`--threads` threads for bootstraps, results, teardowns and reconcile passes,
and one of JOBSYS_HOOK_CONCURRENCY threads for completion hooks alone (queue
`hooks`). Hook receivers are other people's servers: however many hang, they
hold only hook threads, never the ones that start and record jobs.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import dramatiq
from prometheus_client import multiprocess

import jobsys.worker.actors  # noqa: F401 - declares the actors on the broker
from jobsys import metrics
from jobsys.dramatiq.broker import HOOKS_QUEUE
from jobsys.dramatiq.messages import QUEUE_OF, send_reconcile
from jobsys.dramatiq.signing import require_secret
from jobsys.nats.bridge import on_reconnect
from jobsys.settings import get_settings
from jobsys.worker.announce import WorkerBeat
from jobsys.worker.verify import VerifySignatures

log = logging.getLogger(__name__)

# A child that keeps dying at start (bad config) should not spin the CPU.
RESTART_DELAY_S = 1.0
STOP_TIMEOUT_MS = 30_000
# An idle queue is polled with a backoff up to this. Dramatiq's default
# (1,000 ms) let result batches and bootstraps wait up to a second whenever
# the worker had caught up; polling an empty Redis list 10 times a second
# costs nothing measurable.
POLL_MAX_MS = 100


def run_worker(threads: int, metrics_port: int | None = None) -> None:
    """Run one Dramatiq worker in this process until SIGTERM/SIGINT."""
    require_secret()
    metrics.serve(metrics_port)
    broker = dramatiq.get_broker()
    broker.add_middleware(VerifySignatures())
    on_reconnect(_reconcile_after_reconnect)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    queues = set(QUEUE_OF.values())
    hook_threads = get_settings().hook_concurrency
    # Two Dramatiq workers in one process, each with its own consumers,
    # prefetch and threads (Dramatiq's docs advise one Worker per process; what
    # the two share is the broker and its middleware, which keep no per-worker
    # state: each Worker adds consumers only for the queues it was given).
    # Dramatiq warns at each start that the second Worker's own middleware is
    # "of the same type twice": that is this design, not a mistake.
    broker.logger.addFilter(_SecondWorkerMiddleware())
    workers = [
        dramatiq.Worker(broker, worker_threads=threads, queues=queues - {HOOKS_QUEUE},
                        worker_timeout=POLL_MAX_MS),
        dramatiq.Worker(broker, worker_threads=hook_threads, queues={HOOKS_QUEUE},
                        worker_timeout=POLL_MAX_MS),
    ]  # fmt: skip
    for w in workers:
        w.start()
    beat = WorkerBeat(threads).start()
    log.info("worker started", extra={"threads": threads, "hook_threads": hook_threads})
    stop.wait()
    log.info("worker stopping: finishing in-flight messages")
    # In-flight actors finish; prefetched messages go back to the queue.
    for w in workers:
        w.stop(timeout=STOP_TIMEOUT_MS)
    beat.stop()
    broker.close()
    log.info("worker stopped")


def _reconcile_after_reconnect() -> None:
    """NATS is back after a loss, maybe a restart that lost streams (those in
    memory, JOBSYS_STREAM_STORAGE=memory): a reconcile pass now publishes
    their pending tasks again, rather than at the scheduler's next tick."""
    try:
        send_reconcile()
        log.info("reconcile pass asked for after NATS came back")
    except Exception as exc:
        log.warning("reconcile pass not enqueued after NATS came back",
                    extra={"error": repr(exc)})  # fmt: skip


class _SecondWorkerMiddleware(logging.Filter):
    """Drops Dramatiq's warning about the second Worker's `_WorkerMiddleware`
    (every other record passes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "_WorkerMiddleware" not in record.getMessage()


def supervise(processes: int, threads: int, metrics_port: int | None = None) -> None:
    """Keep `processes` worker children alive; restart any that dies.

    With `metrics_port`, the children write their metrics to a private
    folder and this process serves their sum there.
    """
    cmd = [
        sys.executable,
        "-m",
        "jobsys.cli",
        "worker",
        "--processes",
        "1",
        "--threads",
        str(threads),
    ]
    stopping = threading.Event()
    # Children never serve metrics themselves (they would share one port).
    env = {k: v for k, v in os.environ.items() if k != "JOBSYS_METRICS_PORT"}
    metrics_dir = None
    if metrics_port is not None:
        metrics_dir = tempfile.mkdtemp(prefix="jobsys-metrics-")
        env[metrics.MULTIPROC_ENV] = metrics_dir
        metrics.serve(metrics_port, children_dir=metrics_dir)

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    children = [subprocess.Popen(cmd, env=env) for _ in range(processes)]
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    while not stopping.is_set():
        for i, child in enumerate(children):
            code = child.poll()
            if code is not None and not stopping.is_set():
                log.warning("worker child died; restarting", extra={"pid": child.pid, "code": code})
                if metrics_dir is not None:
                    multiprocess.mark_process_dead(child.pid, metrics_dir)
                time.sleep(RESTART_DELAY_S)
                children[i] = subprocess.Popen(cmd, env=env)
        stopping.wait(0.5)
    for child in children:
        child.wait()
    if metrics_dir is not None:
        shutil.rmtree(metrics_dir, ignore_errors=True)

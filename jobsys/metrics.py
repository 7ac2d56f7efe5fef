"""Every Prometheus metric of jobsys, defined here and nowhere else.

Names follow Prometheus conventions: `jobsys_` prefix, `_total` for
counters, base units (`_seconds`), and low-cardinality labels only
(pipeline, outcome, status, finding kind: never a task, rarely a job).

Who serves what:

- `jobsys process --metrics-port N`: the processor's metrics (tasks run,
  task duration, result batches, results held);
- `jobsys worker --metrics-port N`: result recording (batch latency, ledger
  rows moved, finalizations) and the reconciler's findings (passes run by
  the worker's reconcile actor). With `--processes P` the supervisor serves
  the sum over its children (prometheus_client's multiprocess mode);
- `jobsys exporter --port N`: gauges read from Postgres on every scrape
  (jobsys.ops.exporter): jobs by status, and the tasks of each active job.

`JOBSYS_METRICS_PORT` is the default of both `--metrics-port` options.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger(__name__)

# prometheus_client's own switch: set (by the worker supervisor) in the
# environment of processes whose metrics are summed over several processes.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Task durations from a millisecond to ten minutes (pipelines vary widely).
TASK_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600)
# Recording one batch: one transaction, normally a few milliseconds.
RECORD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

# -- the processor (`jobsys process`) ------------------------------------------------

TASKS_RUN = Counter(
    "jobsys_tasks_run_total",
    "Pipeline runs by outcome: done, failed (permanent), retry (transient error, nak'ed), "
    "timeout (stopped and charged).",
    ["pipeline", "outcome"],
)
TASK_DURATION = Histogram(
    "jobsys_task_duration_seconds",
    "Wall time of one pipeline run.",
    ["pipeline"],
    buckets=TASK_BUCKETS,
)
RESULT_BATCHES_SENT = Counter(
    "jobsys_result_batches_sent_total", "Result batches sent to the workers (first sends)."
)
RESULT_BATCHES_CONFIRMED = Counter(
    "jobsys_result_batches_confirmed_total", "Result batches a worker confirmed recorded."
)
RESULT_BATCHES_RESENT = Counter(
    "jobsys_result_batches_resent_total",
    "Result batches sent again (send failed, or no confirmation in time).",
)
RESULTS_HELD = Gauge(
    "jobsys_results_held",
    "Results sent but not yet confirmed recorded (kept in progress in NATS).",
    multiprocess_mode="livesum",
)

# -- the worker (`jobsys worker`) ----------------------------------------------------

BATCH_RECORD_SECONDS = Histogram(
    "jobsys_result_batch_record_seconds",
    "Time to record one result batch: validate, ledger and counters in one transaction.",
    buckets=RECORD_BUCKETS,
)
ROWS_MOVED = Counter(
    "jobsys_ledger_rows_moved_total",
    "Ledger rows moved out of pending by result batches, by the status they moved to.",
    ["status"],
)
BATCHES_RECORDED = Counter(
    "jobsys_result_batches_recorded_total",
    "Result batches recorded, by whether they moved any row (a replay moves none).",
    ["moved"],
)
FINALIZATIONS = Counter(
    "jobsys_jobs_finalized_total",
    "Jobs a result batch finalized, by final status.",
    ["status"],
)
RECONCILE_FINDINGS = Counter(
    "jobsys_reconcile_findings_total",
    "Reconciler findings by kind and the action taken.",
    ["kind", "action"],
)


def record_batch(seconds: float, moved_done: int, moved_failed: int, finalized: str | None) -> None:
    """Count one recorded result batch (the worker's process_results actor)."""
    BATCH_RECORD_SECONDS.observe(seconds)
    ROWS_MOVED.labels("done").inc(moved_done)
    ROWS_MOVED.labels("failed").inc(moved_failed)
    BATCHES_RECORDED.labels("yes" if moved_done + moved_failed else "no").inc()
    if finalized is not None:
        FINALIZATIONS.labels(finalized).inc()


# -- serving --------------------------------------------------------------------------


def serve(port: int | None, addr: str = "0.0.0.0", children_dir: str | None = None) -> None:
    """Serve this process's metrics on `port` in a background thread (None: not at all).

    With `children_dir`, serve instead the sum over the processes that write
    their metrics there (children started with MULTIPROC_ENV set to it).
    """
    if port is None:
        return
    if children_dir is None:
        start_http_server(port, addr)
    else:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=children_dir)
        start_http_server(port, addr, registry=registry)
    log.info("metrics served", extra={"port": port})

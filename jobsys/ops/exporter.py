"""`jobsys exporter`: Prometheus gauges read from Postgres at every scrape.

Jobs by status, and the tasks of each active job by state (the live views'
one query, jobsys.ops.monitor). The metrics of processes are jobsys.metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from jobsys.display import one_line
from jobsys.ops.monitor import active_jobs, jobs_by_status

log = logging.getLogger(__name__)


class PostgresCollector(Collector):
    """Gauges read from Postgres at each scrape (two cheap queries)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "jobsys_exporter_database_up", "1 if the last read of Postgres worked."
        )
        try:
            statuses = jobs_by_status()
            snapshot = active_jobs()
        except Exception as exc:
            log.warning("exporter: cannot read Postgres", extra={"error": one_line(exc)})
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("jobsys_jobs", "Jobs by status.", labels=["status"])
        for status in ("queued", "started", "canceling", "success", "failure", "revoked"):
            jobs.add_metric([status], statuses.get(status, 0))
        yield jobs
        tasks = GaugeMetricFamily(
            "jobsys_active_job_tasks",
            "Tasks of each active job by state (one series per active job and state).",
            labels=["job_id", "pipeline", "state"],
        )
        for job in snapshot.jobs:
            labels = [str(job.job_id), job.pipeline]
            for state, value in (("pending", job.pending), ("done", job.done),
                                 ("failed", job.failed), ("lost", job.lost)):  # fmt: skip
                tasks.add_metric([*labels, state], value)
        yield tasks


def serve_exporter(port: int, addr: str = "0.0.0.0") -> None:
    """Serve the Postgres gauges (and nothing else) on `port` in a background thread."""
    registry = CollectorRegistry()
    registry.register(PostgresCollector())
    start_http_server(port, addr, registry=registry)
    log.info("exporter serving", extra={"port": port})

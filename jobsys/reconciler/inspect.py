"""The `jobsys inspect` read model: one job's counters, ledger and NATS side by side."""

from __future__ import annotations

from typing import Any

from jobsys.errors import JobNotFound
from jobsys.nats.bridge import bridge
from jobsys.nats.subjects import JobNames
from jobsys.pg.db import connection
from jobsys.pg.queries import Q
from jobsys.reconciler.observe import observe_job
from jobsys.reconciler.state import COUNTERS
from jobsys.settings import Settings, get_settings

# How long `inspect` waits for NATS before showing it as not readable.
INSPECT_NATS_TIMEOUT_S = 30.0


def inspect_job(
    job_id: int,
    settings: Settings | None = None,
    findings: int = 10,
    *,
    audit_ledger: bool = True,
    nats_timeout_s: float = INSPECT_NATS_TIMEOUT_S,
) -> dict[str, Any]:
    """A job's counters, its ledger's counts and NATS's view side by side, with the
    reconciler's latest findings about it (last seen first). Raises JobNotFound.

    Counting the ledger reads every task of the job (about a second for a
    million); ``audit_ledger=False`` leaves it out (``ledger`` is then empty)
    for a view that must stay quick whatever the job's size (the console's
    job page)."""
    s = settings or get_settings()
    with connection() as conn:
        job = conn.execute(Q.get_job, {"job_id": job_id}).fetchone()
        if job is None:
            raise JobNotFound(job_id)
        ledger = (
            conn.execute(Q.ledger_counts, {"job_id": job_id}).fetchone() if audit_ledger else None
        )
        found = conn.execute(Q.job_findings, {"job_id": job_id, "limit": findings}).fetchall()
    names = JobNames.of(s.namespace, job_id)
    nats: dict[str, Any]
    try:
        nv = bridge().run(lambda nc, js: observe_job(js, names), timeout=nats_timeout_s)
        nats = {"stream_name": names.stream, "consumer_name": names.consumer, **nv.as_dict()}
    except Exception as exc:
        nats = {"stream_name": names.stream, "error": f"NATS not readable: {exc!r}"}
    return {
        "job_id": job_id,
        "status": job["status"],
        "counters": {k: job[f"{k}_count"] for k in (*COUNTERS, "total", "published")},
        "ledger": dict(ledger) if ledger else {},
        "nats": nats,
        "findings": [dict(r) for r in found],
    }

"""Duty `prune_history`: the reconciler's and the dashboards' history kept bounded.

Rate rollups (`job_minutes`), findings last seen and pass records older than
`JOBSYS_HISTORY_DAYS` are deleted, at most PRUNE_BATCH rows of each per pass
(so a long backlog, e.g. after the setting was lowered, is worked off over a
few passes instead of making one pass slow). A finding still being seen is
kept however long ago it was first seen: its `at` is its last sighting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobsys.pg.db import connection
from jobsys.pg.queries import Q
from jobsys.reconciler.duties import PassContext

# Rows of each history table deleted per pass at most.
PRUNE_BATCH = 10_000


def prune_history(ctx: PassContext) -> Mapping[str, Any]:
    """Delete history older than the window; returns rows deleted per table."""
    params = {"keep_s": ctx.settings.history_days * 86_400, "limit": PRUNE_BATCH}
    with connection() as conn:
        minutes = conn.execute(Q.prune_job_minutes, params).rowcount
        findings = conn.execute(Q.prune_findings, params).rowcount
        runs = conn.execute(Q.prune_runs, params).rowcount
    return {"job_minutes": minutes, "findings": findings, "runs": runs}

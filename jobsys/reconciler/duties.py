"""Duties: the namespace-wide work each pass does after looking at every job.

A duty is a name and a function of the pass's context returning what it did
(a small JSON-able mapping, recorded under ``detail.duties.<name>`` of the
pass's `reconcile_runs` row). Duties run in order; one that raises is
recorded as ``{"error": ...}`` and the others still run. A duty that finds
something about a job records it (`record_finding`) and appends it to
``ctx.findings``, so it shows in the pass's report.

The list itself is `jobsys.reconciler.passes.DUTIES`. A plain function
``f(settings) -> int`` becomes one with
``Duty("name", lambda ctx: {"count": f(ctx.settings)})``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jobsys.pg.db import Conn
from jobsys.reconciler.findings import Finding
from jobsys.settings import Settings


@dataclass
class PassContext:
    """What a duty gets from the pass that runs it."""

    run_id: int
    settings: Settings
    # The pass's lock connection: `job_lock(kind, job_id, ctx.lock_conn)`
    # takes a per-job lock without opening a connection per job.
    lock_conn: Conn
    # Every job stream of the namespace when the pass began: {stream name: job id}.
    job_streams: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


@dataclass(frozen=True)
class Duty:
    """One namespace-wide duty of a pass."""

    name: str
    run: Callable[[PassContext], Mapping[str, Any]]

"""Findings: what a handler did (`Handled`), what a pass reports (`Finding`,
`PassReport`), and how a finding is recorded (`record_finding`).

A finding identical to the job's latest finding of its kind (same action,
same reason) is counted on that row rather than added (see
`record_reconcile_finding` in sql/queries/reconcile.sql), so a job that waits
for hours is one row with a count, first and last seen.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobsys import metrics
from jobsys.lifecycle.states import Status
from jobsys.pg.db import connection
from jobsys.pg.queries import Q
from jobsys.reconciler.kinds import Action, Kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Handled:
    """What a handler did about one finding."""

    action: Action
    detail: Mapping[str, Any] = field(default_factory=dict)
    # The job's final status, when this action finalized it.
    finalized: Status | None = None

    @property
    def ends_job(self) -> bool:
        """The job is final now: what else was seen about it no longer applies."""
        return self.finalized is not None or self.action == Action.REVOKED

    def as_detail(self) -> dict[str, Any]:
        """The detail recorded (``finalized`` added when the job was finalized)."""
        out = dict(self.detail)
        if self.finalized is not None:
            out["finalized"] = str(self.finalized)
        return out


@dataclass
class Finding:
    """One thing a pass found about a job, and what it did about it."""

    job_id: int | None
    kind: Kind
    action: Action
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str | None:
        """What makes two findings of one kind and action the same."""
        value = self.detail.get("reason", self.detail.get("error"))
        return str(value) if value is not None else None

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape `jobsys reconcile --json` prints."""
        return {"job_id": self.job_id, "kind": str(self.kind), "action": str(self.action),
                "detail": self.detail}  # fmt: skip


@dataclass
class PassReport:
    """What one pass checked and found."""

    run_id: int
    jobs_checked: int
    findings: list[Finding]
    skipped_busy: int = 0

    def as_dict(self) -> dict[str, Any]:
        """``{"jobs_checked": n, "findings": [...]}`` (plus the run id)."""
        return {
            "run_id": self.run_id,
            "jobs_checked": self.jobs_checked,
            "findings": [f.as_dict() for f in self.findings],
        }


def record_finding(run_id: int, finding: Finding) -> int:
    """Record a finding of pass `run_id`; returns how many passes have now seen it."""
    with connection() as conn:
        row = conn.execute(
            Q.record_reconcile_finding,
            {
                "run_id": run_id,
                "job_id": finding.job_id,
                "kind": str(finding.kind),
                "action": str(finding.action),
                "reason": finding.reason,
                "detail": json.dumps(finding.detail, default=str),
            },
        ).fetchone()
    seen = int(row["seen"]) if row else 1
    _note_recorded(finding, seen)
    return seen


def record_findings(run_id: int, findings: list[Finding]) -> None:
    """Record many findings of pass `run_id` (at most one per job and kind) in one
    statement, each as `record_finding` would."""
    if not findings:
        return
    rows = [{"job_id": f.job_id, "kind": str(f.kind), "action": str(f.action),
             "reason": f.reason, "detail": f.detail} for f in findings]  # fmt: skip
    with connection() as conn:
        done = conn.execute(
            Q.record_reconcile_findings,
            {"run_id": run_id, "findings": json.dumps(rows, default=str)},
        ).fetchall()
    seen = {(r["job_id"], r["kind"]): int(r["seen"]) for r in done}
    for finding in findings:
        _note_recorded(finding, seen.get((finding.job_id, str(finding.kind)), 1))


def _note_recorded(finding: Finding, seen: int) -> None:
    """The metric and log line of one recorded finding."""
    metrics.RECONCILE_FINDINGS.labels(str(finding.kind), str(finding.action)).inc()
    level = logging.INFO if finding.action != Action.NONE else logging.DEBUG
    if log.isEnabledFor(level):
        extra = {"job_id": finding.job_id, "kind": str(finding.kind),
                 "action": str(finding.action), "seen": seen}  # fmt: skip
        log.log(level, "reconcile finding", extra=extra)


def read_latest_findings(job_ids: list[int]) -> dict[tuple[int, str], dict[str, Any]]:
    """Each job's latest finding of each kind ({(job_id, kind): {id, action, reason}}),
    in one query: what lets a pass skip writing a finding that did not change."""
    if not job_ids:
        return {}
    with connection() as conn:
        rows = conn.execute(Q.latest_findings, {"job_ids": job_ids}).fetchall()
    return {(r["job_id"], r["kind"]): dict(r) for r in rows}


def refresh_findings(run_id: int, finding_ids: list[int]) -> None:
    """Count unchanged findings as seen by pass `run_id`: one statement for all."""
    if not finding_ids:
        return
    with connection() as conn:
        conn.execute(Q.refresh_findings, {"run_id": run_id, "ids": finding_ids})

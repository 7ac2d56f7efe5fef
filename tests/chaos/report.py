"""What a chaos run did and whether every invariant held: the report and its table."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from tests.chaos.faults import FAULTS
from tests.chaos.mix import MIX_KINDS

# Figures printed in this order (the JSON has them all).
FIGURES = (
    "seconds", "jobs", "tasks", "small_max_deliver_jobs", "settle_s", "lost",
    "lost_after_processor_deaths", "duplicated", "tasks_run_again", "max_deliveries",
    "max_deliveries_plain", "plain_runs_unexplained", "processor_deaths", "exits_on_their_own",
    "scheduler_passes", "harness_passes", "probes", "probe_longest_wait_s",
    "worker_peak_rss_mb", "remote_leased", "remote_reported",
)  # fmt: skip


@dataclass
class Report:
    """What happened and whether every invariant held."""

    seed: int
    seconds: float
    jobs: int = 0
    tasks: int = 0
    small_max_deliver_jobs: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    fault_figures: dict[str, dict[str, int]] = field(default_factory=dict)
    # Tasks of each special kind submitted; and of jobs nobody cancelled, how
    # each ended ("as asked", "lost", or the status it wrongly ended in).
    mix: Counter[str] = field(default_factory=Counter)
    # Jobs by priority and by weight (as they ended), and how many had theirs
    # changed mid-run (`jobsys set`).
    shares: Counter[str] = field(default_factory=Counter)
    # Cancels and share changes that met a job row a frozen worker held
    # (JobBusy after JOBSYS_LOCK_WAIT_S), and were made on a later tick.
    busy: Counter[str] = field(default_factory=Counter)
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    finals: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    # Lost tasks whose every delivery a processor's death or a NATS restart can explain.
    lost_after_processor_deaths: int = 0
    duplicated: int = 0
    settle_s: float = 0.0
    passes: int = 0
    harness_passes: int = 0
    findings: Counter[str] = field(default_factory=Counter)
    redelivered: int = 0
    max_deliveries: int = 0
    # Of plain tasks (no failure asked): every delivery past the first was caused by a fault.
    max_deliveries_plain: int = 0
    # Plain tasks delivered more often than 1 + the processor deaths during their job.
    plain_runs_unexplained: int = 0
    processor_deaths: int = 0
    # Tasks the remote processor leased, and outcomes it reported, through the gateway.
    remote_leased: int = 0
    remote_reported: int = 0
    exits_on_their_own: Counter[str] = field(default_factory=Counter)
    # Kinds injected fewer times than asked (`--min-each`): the run proves too little.
    shortfalls: list[str] = field(default_factory=list)
    # Hook outcomes by receiver kind and state, probe jobs, the workers' peak RSS.
    hooks: dict[str, int] = field(default_factory=dict)
    probes: int = 0
    probe_longest_wait_s: float = 0.0
    worker_peak_rss_mb: int = 0

    @property
    def ok(self) -> bool:
        """Every invariant held and every kind was injected often enough."""
        return not self.violations and not self.shortfalls

    def require_each(self, n: int) -> None:
        """Note every fault kind, and every kind of special task, seen fewer than `n` times."""
        for kind in FAULTS:
            if self.faults.get(kind, 0) < n:
                self.shortfalls.append(f"fault {kind} injected {self.faults.get(kind, 0)} < {n}")
        for kind in MIX_KINDS:
            if self.mix.get(kind, 0) < n:
                self.shortfalls.append(f"mix {kind}: {self.mix.get(kind, 0)} tasks < {n}")

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-able data (`--json`; tests/test_chaos.py reads it)."""
        return {
            "seed": self.seed,
            "seconds": round(self.seconds, 1),
            "jobs": self.jobs,
            "tasks": self.tasks,
            "small_max_deliver_jobs": self.small_max_deliver_jobs,
            "faults": dict(self.faults),
            "fault_figures": self.fault_figures,
            "mix": dict(self.mix),
            "shares": dict(self.shares),
            "busy": dict(self.busy),
            "outcomes": {k: dict(v) for k, v in self.outcomes.items()},
            "finals": dict(self.finals),
            "lost": self.lost,
            "lost_after_processor_deaths": self.lost_after_processor_deaths,
            "duplicated": self.duplicated,
            "settle_s": round(self.settle_s, 1),
            "scheduler_passes": self.passes,
            "harness_passes": self.harness_passes,
            "findings": dict(self.findings),
            "tasks_run_again": self.redelivered,
            "max_deliveries": self.max_deliveries,
            "max_deliveries_plain": self.max_deliveries_plain,
            "plain_runs_unexplained": self.plain_runs_unexplained,
            "processor_deaths": self.processor_deaths,
            "remote_leased": self.remote_leased,
            "remote_reported": self.remote_reported,
            "exits_on_their_own": sum(self.exits_on_their_own.values()),
            "exits_on_their_own_by_kind": dict(self.exits_on_their_own),
            "hooks": self.hooks,
            "probes": self.probes,
            "probe_longest_wait_s": round(self.probe_longest_wait_s, 1),
            "worker_peak_rss_mb": self.worker_peak_rss_mb,
            "violations": self.violations,
            "shortfalls": self.shortfalls,
            "ok": self.ok,
        }


def _outcome_text(counts: Counter[str]) -> str:
    return ", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "-"


def print_report(report: Report) -> None:
    """The run as a table."""
    table = Table(title=f"chaos run (seed {report.seed})")
    table.add_column("what")
    table.add_column("value")
    d = report.as_dict()
    for key in FIGURES:
        table.add_row(key, str(d[key]))
    for fault in FAULTS:
        figures = report.fault_figures.get(fault, {})
        extra = ", ".join(f"{k} {v}" for k, v in sorted(figures.items()))
        table.add_row(
            f"fault: {fault}", f"{report.faults.get(fault, 0)}" + (f" ({extra})" if extra else "")
        )
    for kind in (*MIX_KINDS, "fail", "transient"):
        label = "mix" if kind in MIX_KINDS else "tasks"
        outcome = _outcome_text(report.outcomes.get(kind, Counter()))
        table.add_row(f"{label}: {kind}", f"{report.mix.get(kind, 0)} ({outcome})")
    for kind, n in sorted(report.hooks.items()):
        table.add_row(f"hook: {kind}", str(n))
    for what, n in sorted(report.busy.items()):
        table.add_row(f"{what} met a held job row (tried again)", str(n))
    for status, n in sorted(report.finals.items()):
        table.add_row(f"final: {status}", str(n))
    for kind, n in sorted(report.findings.items()):
        table.add_row(f"reconciler found: {kind}", str(n))
    held = "ALL HOLD" if not report.violations else f"{len(report.violations)} violated"
    table.add_row("invariants", held)
    if report.shortfalls:
        table.add_row("kinds injected too rarely", str(len(report.shortfalls)))
    Console(width=120).print(table)
    for v in report.violations[:30]:
        print(f"VIOLATION: {v}")
    for s in report.shortfalls:
        print(f"SHORTFALL: {s}")

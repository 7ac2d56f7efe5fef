"""The reconciler: finds every way a job can get stuck and un-sticks it.

One file per duty, in the way River keeps its maintenance services:

| module | what |
|---|---|
| `kinds` | `Kind` (what can be found) and `Action` (what can be done) |
| `state` | what a pass sees: `JobState` (database), `NatsView` (NATS), `Thresholds` |
| `diagnose` | `diagnose(job, nats, thresholds) -> [Kind]`, pure |
| `observe` | reading the database's and NATS's side of the active jobs |
| `handlers` | `HANDLERS`: one handler per kind, each returning a `Handled` |
| `counters` | `counters_drift` (and `repair_counters`) |
| `lost` | `tasks_exhausted`, `idle_lost`, `waiting` (and `mark_lost`, `read_exhausted`) |
| `restream` | `stream_missing`, `stream_replaced`, `consumer_missing`, `consumer_stale` (fill) |
| `rebootstrap` | `queued_stale`, `bootstrap_stalled` |
| `cancel` | `cancel_overdue` |
| `findings` | `Handled`, `Finding`, `PassReport`; findings recorded, repeats counted |
| `duties` | `Duty`, `PassContext`: namespace-wide work at the end of a pass |
| `strays` | duty `stray_streams` |
| `prune` | duty `prune_history` |
| `passes` | `reconcile_pass` and the list of duties, `DUTIES` |
| `inspect` | `inspect_job`, the `jobsys inspect` read model |

The findings, their conditions and actions are in docs/reconciler.md.
"""

from jobsys.reconciler.counters import repair_counters
from jobsys.reconciler.diagnose import diagnose
from jobsys.reconciler.duties import Duty, PassContext
from jobsys.reconciler.findings import Finding, Handled, PassReport
from jobsys.reconciler.inspect import inspect_job
from jobsys.reconciler.kinds import Action, Kind
from jobsys.reconciler.lost import lose_tasks, mark_lost, read_exhausted
from jobsys.reconciler.passes import DUTIES, reconcile_pass
from jobsys.reconciler.state import JobState, NatsView, Thresholds

__all__ = [
    "DUTIES",
    "Action",
    "Duty",
    "Finding",
    "Handled",
    "JobState",
    "Kind",
    "NatsView",
    "PassContext",
    "PassReport",
    "Thresholds",
    "diagnose",
    "inspect_job",
    "lose_tasks",
    "mark_lost",
    "read_exhausted",
    "reconcile_pass",
    "repair_counters",
]

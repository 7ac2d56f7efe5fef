"""Handler of `cancel_overdue`: a cancel whose teardown never ran, finished by force."""

from __future__ import annotations

from jobsys.reconciler.findings import Outcome
from jobsys.reconciler.kinds import Action
from jobsys.reconciler.state import Seen
from jobsys.states import Status
from jobsys.teardown import run_teardown


def cancel_overdue(seen: Seen) -> Outcome:
    """Canceling past the grace period: revoked (pending tasks cancelled), stream deleted."""
    status = run_teardown(seen.job_id, reason="reconcile: canceling past the grace period")
    action = Action.REVOKED if status == Status.REVOKED else Action.NONE
    return Outcome(action, {"status": str(status)})

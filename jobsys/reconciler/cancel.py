"""Handler of `cancel_overdue`: a cancel whose teardown never ran, finished by force."""

from __future__ import annotations

from jobsys.lifecycle.revoke import revoke
from jobsys.lifecycle.states import Status
from jobsys.lifecycle.teardown import run_teardown
from jobsys.reconciler.findings import Handled
from jobsys.reconciler.kinds import Action
from jobsys.reconciler.state import Seen


def cancel_overdue(seen: Seen) -> Handled:
    """Canceling past the grace period: revoked (pending tasks cancelled), stream deleted."""
    reason = "reconcile: canceling past the grace period"
    run_teardown(seen.job_id, reason=reason)
    status = revoke(seen.job_id, reason)
    action = Action.REVOKED if status == Status.REVOKED else Action.NONE
    return Handled(action, {"status": str(status or seen.job.status)})

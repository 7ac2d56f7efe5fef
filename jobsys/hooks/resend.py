"""The reconciler's hook duty: enqueue every delivery that is overdue or whose sender died.

A delivery's message can be lost (Redis flushed, a worker killed between the
final commit and the follow-up), and a sender can die between its claim and
its mark; both are found here by their times in `job_hooks`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from jobsys.dramatiq.messages import send_hook
from jobsys.pg.db import connection
from jobsys.pg.queries import Q
from jobsys.settings import Settings, get_settings

log = logging.getLogger(__name__)


# Overdue deliveries the reconciler re-enqueues per pass (the rest wait).
RESEND_LIMIT = 1_000


@dataclass
class ResendReport:
    """What `resend_due` did."""

    resent: list[int]
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """For the reconcile run's detail."""
        out: dict[str, Any] = {"hooks_resent": len(self.resent)}
        if self.error:
            out["error"] = self.error
        return out


def resend_due(settings: Settings | None = None) -> ResendReport:
    """Reconciler duty: enqueue every hook delivery that is overdue or whose sender died.

    Only enqueues `deliver_hook` messages; the claim in `deliver` makes extra
    messages harmless, so this may run in any number of passes at once.
    """
    s = settings or get_settings()
    with connection() as conn:
        rows = conn.execute(
            Q.hooks_due, {"resend_after_s": s.hook_resend_after_s, "limit": RESEND_LIMIT}
        ).fetchall()
    report = ResendReport(resent=[])
    for row in rows:
        try:
            send_hook(row["job_id"])
        except Exception as exc:
            report.error = f"enqueue failed: {exc!r}"
            log.warning("hook resend not enqueued", extra={"job_id": row["job_id"],
                                                          "error": repr(exc)})  # fmt: skip
            break
        report.resent.append(row["job_id"])
        log.info("hook resent", extra={"job_id": row["job_id"], "state": row["state"],
                                       "attempts": row["attempts"]})  # fmt: skip
    return report

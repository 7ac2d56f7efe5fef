"""jobsys: fan-out batch jobs with exact counts.

Postgres is the sole source of truth; NATS JetStream carries one message per
task to processors; Dramatiq (on Redis) carries results back in batches.
"""

from jobsys.api.cancel import CancelResult, cancel
from jobsys.api.export import results
from jobsys.api.read import get_job, list_jobs
from jobsys.api.retry import retry
from jobsys.api.submit import submit
from jobsys.api.tasks import group_errors, list_tasks
from jobsys.errors import (
    InvalidInput,
    JobNotFinal,
    JobNotFound,
    JobsysError,
    LedgerPruned,
    PermanentError,
)
from jobsys.lifecycle.retention import prune

__all__ = [
    "CancelResult",
    "InvalidInput",
    "JobNotFinal",
    "JobNotFound",
    "JobsysError",
    "LedgerPruned",
    "PermanentError",
    "cancel",
    "get_job",
    "group_errors",
    "list_jobs",
    "list_tasks",
    "prune",
    "results",
    "retry",
    "submit",
]

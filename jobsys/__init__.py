"""jobsys: fan-out batch jobs with exact counts.

Postgres is the sole source of truth; NATS JetStream carries one message per
task to processors; Dramatiq (on Redis) carries results back in batches.
"""

from jobsys.errors import (
    InvalidInput,
    JobNotFinal,
    JobNotFound,
    JobsysError,
    LedgerPruned,
    PermanentError,
)
from jobsys.export import results
from jobsys.jobs import CancelResult, cancel, get_job, list_jobs, submit
from jobsys.retention import prune
from jobsys.retry import retry
from jobsys.tasklist import group_errors, list_tasks

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

"""jobsys: fan-out batch jobs with exact counts.

Postgres is the sole source of truth; NATS JetStream carries one message per
task to processors; Dramatiq (on Redis) carries results back in batches.
"""

from jobsys.errors import InvalidInput, JobNotFound, JobsysError, PermanentError
from jobsys.jobs import CancelResult, cancel, get_job, list_jobs, submit

__all__ = [
    "CancelResult",
    "InvalidInput",
    "JobNotFound",
    "JobsysError",
    "PermanentError",
    "cancel",
    "get_job",
    "list_jobs",
    "submit",
]

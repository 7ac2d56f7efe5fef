"""jobsys: fan-out batch jobs with exact counts.

Postgres is the sole source of truth; NATS JetStream carries one message per
task to processors; Dramatiq (on Redis) carries results back in batches.

The names below are loaded when first used, so that a process importing one
part of jobsys (a processor, which never touches Postgres) does not load
the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobsys.api.cancel import CancelResult, cancel
    from jobsys.api.export import results
    from jobsys.api.job import Job, get
    from jobsys.api.read import get_job, list_jobs
    from jobsys.api.retry import retry
    from jobsys.api.share import ShareResult, set_share
    from jobsys.api.submit import submit
    from jobsys.api.tasks import group_errors, list_tasks
    from jobsys.errors import (
        InvalidInput,
        JobBusy,
        JobNotFinal,
        JobNotFound,
        JobsysError,
        LedgerPruned,
        PermanentError,
        TransientError,
        WaitTimedOut,
    )
    from jobsys.lifecycle.retention import prune
    from jobsys.pipelines.registry import pipeline

# Each public name and the module that defines it.
_WHERE = {
    "CancelResult": "jobsys.api.cancel",
    "cancel": "jobsys.api.cancel",
    "results": "jobsys.api.export",
    "Job": "jobsys.api.job",
    "get": "jobsys.api.job",
    "get_job": "jobsys.api.read",
    "list_jobs": "jobsys.api.read",
    "retry": "jobsys.api.retry",
    "ShareResult": "jobsys.api.share",
    "set_share": "jobsys.api.share",
    "submit": "jobsys.api.submit",
    "group_errors": "jobsys.api.tasks",
    "list_tasks": "jobsys.api.tasks",
    "prune": "jobsys.lifecycle.retention",
    "pipeline": "jobsys.pipelines.registry",
    "InvalidInput": "jobsys.errors",
    "JobBusy": "jobsys.errors",
    "JobNotFinal": "jobsys.errors",
    "JobNotFound": "jobsys.errors",
    "JobsysError": "jobsys.errors",
    "LedgerPruned": "jobsys.errors",
    "PermanentError": "jobsys.errors",
    "TransientError": "jobsys.errors",
    "WaitTimedOut": "jobsys.errors",
}

__all__ = [
    "CancelResult",
    "InvalidInput",
    "Job",
    "JobBusy",
    "JobNotFinal",
    "JobNotFound",
    "JobsysError",
    "LedgerPruned",
    "PermanentError",
    "ShareResult",
    "TransientError",
    "WaitTimedOut",
    "cancel",
    "get",
    "get_job",
    "group_errors",
    "list_jobs",
    "list_tasks",
    "pipeline",
    "prune",
    "results",
    "retry",
    "set_share",
    "submit",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return importlib.import_module("jobsys.version").version()
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'jobsys' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])

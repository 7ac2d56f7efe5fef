"""Exceptions users of jobsys see or raise."""

from __future__ import annotations


class JobsysError(Exception):
    """Base of every error jobsys reports to a user; its message is one clear line."""


class PermanentError(Exception):
    """Raised by a pipeline: this task cannot succeed; count it `failed`, do not retry."""


class JobNotFound(JobsysError):
    """No job has this id."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class InvalidInput(JobsysError):
    """Input at a boundary (CLI argument, items file, message) failed validation."""


class ServiceUnavailable(JobsysError):
    """Postgres, Redis or NATS could not be reached."""

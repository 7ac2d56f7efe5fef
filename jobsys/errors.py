"""Exceptions users of jobsys see or raise."""

from __future__ import annotations


class JobsysError(Exception):
    """Base of every error jobsys reports to a user; its message is one clear line."""


class PermanentError(Exception):
    """Raised by a pipeline: this task cannot succeed; count it `failed`, do not retry."""


class TransientError(Exception):
    """Raised by a pipeline: this attempt failed but another may succeed (delivered again)."""


class JobNotFound(JobsysError):
    """No job has this id."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class InvalidInput(JobsysError):
    """Input at a boundary (CLI argument, items file, message) failed validation."""


class ServiceUnavailable(JobsysError):
    """Postgres, Redis or NATS could not be reached."""


def _in_the_way(holders: list[tuple[int, str]], lead: str) -> tuple[str, int | str]:
    """`lead` and the sessions' lines ("" when none are known), and the pid a person
    may end: the one session's, else a placeholder."""
    held = f"; {lead} {'; '.join(h for _, h in holders)}" if holders else ""
    return held, holders[0][0] if len(holders) == 1 else "<pid>"


class JobBusy(JobsysError):
    """Another session held the job's row longer than a write was willing to wait."""

    def __init__(self, job_id: int, wait_s: float, holders: list[tuple[int, str]]) -> None:
        held, pid = _in_the_way(holders, "it may be held by")
        super().__init__(
            f"job {job_id} is busy: another session held its row for over {wait_s:g} s, "
            f"so nothing was changed{held}. Try again; a session that stays stuck (a frozen "
            f"worker) can be ended with SELECT pg_terminate_backend({pid})"
        )
        self.job_id = job_id


class MigrationBlocked(JobsysError):
    """A migration could not take its tables' locks: other sessions kept them."""

    def __init__(self, migration: str, waited_s: float, holders: list[tuple[int, str]]) -> None:
        held, pid = _in_the_way(holders, "sessions in long transactions:")
        super().__init__(
            f"migration {migration} could not lock its tables in {waited_s:g} s, so nothing of "
            f"it was applied{held}. Run `jobsys db migrate` again once they end; a session that "
            f"stays stuck can be ended with SELECT pg_terminate_backend({pid})"
        )
        self.migration = migration


class JobNotFinal(JobsysError):
    """The operation needs a final job (success, failure or revoked)."""

    def __init__(self, job_id: int, status: str, what: str) -> None:
        super().__init__(f"job {job_id} is {status}: only a final job can be {what}")
        self.job_id = job_id


class WaitTimedOut(JobsysError, TimeoutError):
    """A job was not final within the time a caller was willing to wait."""

    def __init__(self, job_id: int, status: str, timeout: float, why: str | None = None) -> None:
        because = f": {why}" if why else ""
        super().__init__(f"job {job_id} is still {status} after {timeout:g} s{because}")
        self.job_id = job_id
        self.status = status
        self.timeout = timeout


class LedgerPruned(JobsysError):
    """Retention deleted this job's per-task ledger; its counters remain."""

    def __init__(self, job_id: int, when: object) -> None:
        at = f" on {when:%Y-%m-%d}" if hasattr(when, "strftime") else ""
        super().__init__(f"job {job_id}'s task ledger was pruned{at} (its counters remain)")
        self.job_id = job_id

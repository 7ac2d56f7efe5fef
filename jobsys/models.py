"""Validated shapes of what crosses a process boundary: result messages and job views."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# One task's result: a JSON object; None for a failed task.
ResultValue = dict[str, Any] | None


class TaskResult(BaseModel):
    """The outcome of one task, as a processor reports it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Annotated[int, Field(ge=0, strict=True)]
    status: Literal["done", "failed"]
    result: ResultValue = None
    error: Annotated[str, Field(max_length=10_000)] | None = None
    reply: Annotated[str, Field(min_length=1, max_length=512)]
    deliveries: Annotated[int, Field(ge=1, strict=True)] = 1

    @model_validator(mode="after")
    def _shape_matches_status(self) -> TaskResult:
        if self.status == "done" and self.error is not None:
            raise ValueError("a done task carries no error")
        if self.status == "failed" and self.error is None:
            raise ValueError("a failed task must say why (error)")
        return self


class ResultBatch(BaseModel):
    """Results of many tasks of one job: the unit `process_results` applies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: Annotated[int, Field(ge=1, strict=True)]
    results: Annotated[list[TaskResult], Field(min_length=1, max_length=10_000)]

    @model_validator(mode="after")
    def _tasks_unique(self) -> ResultBatch:
        seen: set[int] = set()
        for r in self.results:
            if r.task in seen:
                raise ValueError(f"task {r.task} appears twice in one batch")
            seen.add(r.task)
        return self


class JobView(BaseModel):
    """A job as `jobsys status` and `jobsys list` show it."""

    job_id: int
    name: str
    pipeline: str
    status: str
    total: int
    published: int
    done: int
    failed: int
    lost: int
    cancelled: int
    pending: int
    progress: float
    failure_threshold: float
    max_deliver: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobView:
        """Build from a `get_job`/`list_jobs` row; progress is computed, never stored."""
        total = row["total_count"]
        accounted = row["done_count"] + row["failed_count"] + row["lost_count"]
        settled = accounted + row["cancelled_count"]
        return cls(
            job_id=row["id"],
            name=row["name"],
            pipeline=row["pipeline"],
            status=row["status"],
            total=total,
            published=row["published_count"],
            done=row["done_count"],
            failed=row["failed_count"],
            lost=row["lost_count"],
            cancelled=row["cancelled_count"],
            pending=max(total - settled, 0),
            progress=(settled / total) if total else 1.0,
            failure_threshold=row["failure_threshold"],
            max_deliver=row["max_deliver"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            progress_at=row["progress_at"],
        )

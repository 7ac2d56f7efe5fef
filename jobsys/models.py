"""Validated shapes of what crosses a process boundary: result messages and job views.

A result batch is checked item by item: an item whose shape is wrong (no
reply, a task that is not a number, an unknown field, ...) is set aside with
its reason and the others go on; nothing one item holds can reject the
batch. A value that is merely hard to store (an over-long error, a NUL, a
NaN result) is not a shape error: the error text is made storable here and
the result is checked when recorded (`jobsys.storable`), so that only that
task fails.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from jobsys.storable import storable_error, storable_trace

# Most results one batch may carry (processors send ~100); a bigger batch is
# not something any version of the processor sends.
MAX_BATCH_ITEMS = 10_000
# Task numbers and delivery counts are Postgres integers.
PG_INT_MAX = 2**31 - 1
PG_BIGINT_MAX = 2**63 - 1
# A reply (ack) subject is at most this long (NATS makes them much shorter).
MAX_REPLY_CHARS = 512
# A rejected item's reason is cut to this many characters (it goes into an event).
MAX_REASON_CHARS = 300
# An exception's class name, as stored, is at most this long.
MAX_TYPE_CHARS = 200


def _storable_or_none(value: str | None) -> str | None:
    return None if value is None else storable_error(value)


def _type_or_none(value: str | None) -> str | None:
    return None if value is None else storable_error(value)[:MAX_TYPE_CHARS]


def _trace_or_none(value: str | None) -> str | None:
    return None if value is None else storable_trace(value)


class TaskResult(BaseModel):
    """The outcome of one task, as a processor reports it.

    `error` is made storable on the way in (NUL escaped, cut to
    `jobsys.storable.MAX_ERROR_CHARS`), never rejected for its content.
    `result` may be any value here: whether it can be stored (a JSON object
    of strict JSON, not too big) is decided when it is recorded, and if not,
    that task fails with the reason.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Annotated[int, Field(ge=0, le=PG_INT_MAX, strict=True)]
    status: Literal["done", "failed"]
    result: Any = None
    error: Annotated[str | None, AfterValidator(_storable_or_none)] = None
    reply: Annotated[str, Field(min_length=1, max_length=MAX_REPLY_CHARS)]
    deliveries: Annotated[int, Field(ge=1, le=PG_INT_MAX, strict=True)] = 1
    # A failure an exception said: its class (``module.Name``) and its
    # traceback, cut (jobsys.processor.calls.Failure). Made storable, never rejected.
    error_type: Annotated[str | None, AfterValidator(_type_or_none)] = None
    error_trace: Annotated[str | None, AfterValidator(_trace_or_none)] = None

    @model_validator(mode="after")
    def _shape_matches_status(self) -> TaskResult:
        if self.status == "done" and self.error is not None:
            raise ValueError("a done task carries no error")
        if self.status == "failed" and self.error is None:
            raise ValueError("a failed task must say why (error)")
        return self


class RejectedItem(BaseModel):
    """A batch item that is not a well-formed `TaskResult`: never counted, never acked."""

    model_config = ConfigDict(frozen=True)

    index: int
    reply: str
    reason: str


_ITEMS: TypeAdapter[list[TaskResult]] = TypeAdapter(list[TaskResult])


def describe_error(exc: ValidationError, whole: str = "item") -> str:
    """One short, storable line for a validation error (its first problem); `whole`
    names what failed when the problem is not in one field."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    text = f"{exc.error_count()} error(s); first at {where or whole}: {first['msg']}"
    return storable_error(text)[:MAX_REASON_CHARS]


# A retry note (jobsys.processor.retries): [task, deliveries, next attempt in
# epoch seconds, error]. Display only; a malformed batch of notes is dropped.
RetryNote = tuple[
    Annotated[int, Field(ge=0, le=PG_INT_MAX, strict=True)],
    Annotated[int, Field(ge=1, le=PG_INT_MAX, strict=True)],
    Annotated[float, Field(ge=0, lt=1e11, allow_inf_nan=False)],
    Annotated[str, AfterValidator(storable_error)],
]
RETRY_NOTES: TypeAdapter[list[RetryNote]] = TypeAdapter(
    Annotated[list[RetryNote], Field(min_length=1, max_length=MAX_BATCH_ITEMS)]
)


class ResultBatch(BaseModel):
    """Results of many tasks of one job: the unit `process_results` applies.

    Validating a batch never fails because of one item: the well-formed
    items are in `results`, the others in `rejected` with their reasons. Only
    a batch that is not a batch (no job id, `results` not a non-empty list of
    at most MAX_BATCH_ITEMS) raises ValidationError. The same task may
    appear more than once (a message re-published after the duplicate
    window): `jobsys.recording` counts it once and acks every reply.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: Annotated[int, Field(ge=1, le=PG_BIGINT_MAX, strict=True)]
    results: Annotated[list[TaskResult], Field(max_length=MAX_BATCH_ITEMS)]
    rejected: list[RejectedItem] = []

    @model_validator(mode="before")
    @classmethod
    def _items_one_by_one(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        items = data.get("results")
        if not isinstance(items, list) or len(items) > MAX_BATCH_ITEMS:
            return data  # the field's own validation says what is wrong
        if not items and not data.get("rejected"):
            raise ValueError("a result batch holds at least one result")
        bad: list[RejectedItem] = list(data.get("rejected") or [])
        try:
            # The usual batch is all well-formed: one call validates it.
            return {**data, "results": _ITEMS.validate_python(items), "rejected": bad}
        except ValidationError:
            pass
        good: list[TaskResult] = []
        for index, item in enumerate(items):
            if isinstance(item, TaskResult):
                good.append(item)
                continue
            try:
                good.append(TaskResult.model_validate(item))
            except ValidationError as exc:
                reply = item.get("reply") if isinstance(item, dict) else None
                bad.append(
                    RejectedItem(
                        index=index,
                        reply=reply if isinstance(reply, str) else "",
                        reason=describe_error(exc),
                    )
                )
        return {**data, "results": good, "rejected": bad}


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
    # Lineage (a retry's parent and the chain's first job), the completion
    # hook target, and whether retention has pruned the job's ledger.
    # Per-job processor limits (None: the processors' defaults apply).
    task_timeout_s: float | None = None
    max_in_flight: int | None = None
    # Backoff between deliveries of a transient failure (None: the pipeline's or settings').
    retry_delay_s: float | None = None
    retry_delay_max_s: float | None = None
    # At most this many of its tasks start per second (None: no limit of its own).
    rate_per_s: float | None = None
    # Its share of execution slots: higher priority first, then by weight.
    priority: int = 0
    weight: int = 1
    parent_id: int | None = None
    root_id: int | None = None
    on_complete: str | None = None
    ledger_state: str = "kept"
    ledger_pruned_at: datetime | None = None
    # Why the job cannot move on now (jobsys.lifecycle.blocked), when asked; else None.
    blocked: str | None = None

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
            task_timeout_s=row.get("task_timeout_s"),
            max_in_flight=row.get("max_in_flight"),
            retry_delay_s=row.get("retry_delay_s"),
            retry_delay_max_s=row.get("retry_delay_max_s"),
            rate_per_s=row.get("rate_per_s"),
            priority=row.get("priority", 0),
            weight=row.get("weight", 1),
            parent_id=row.get("parent_id"),
            root_id=row.get("root_id"),
            on_complete=row.get("on_complete"),
            ledger_state=row.get("ledger_state") or "kept",
            ledger_pruned_at=row.get("ledger_pruned_at"),
        )

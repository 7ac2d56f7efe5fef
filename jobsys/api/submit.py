"""Submitting a job: its row and ledger in one transaction, then its bootstrap enqueued."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from jobsys.api.enqueue import enqueue_bootstrap
from jobsys.api.items import (
    ItemLimit,
    Items,
    ItemText,
    checked_items,
    items_of,
    submit_item_limit,
)
from jobsys.api.job import Job
from jobsys.api.share import DEFAULT_PRIORITY, DEFAULT_WEIGHT, check_priority, check_weight
from jobsys.dramatiq.signing import require_secret
from jobsys.errors import InvalidInput
from jobsys.hooks.target import HookTarget, check_target
from jobsys.pg.db import connection
from jobsys.pg.events import actor, event_params, log_event, record_event_with
from jobsys.pg.queries import Q
from jobsys.pipelines.resolve import resolve
from jobsys.settings import get_settings, parse_task_rate
from jobsys.storable import storable_text

log = logging.getLogger(__name__)


# How often (in tasks) a large submit reports progress.
_PROGRESS_EVERY = 10_000
# A list of at most this many items, of at most this many bytes in all
# (counted as characters of their JSON texts), is written in one statement
# (job row, tasks, event): a small job's submit is one round trip. More, or
# items read as they come (a file, a generator), go through COPY in a
# transaction.
ONE_STATEMENT_ITEMS = 1_000
ONE_STATEMENT_BYTES = 1 << 20


# Bounds of a job's options (the CLI's options say the same).
MAX_TASK_TIMEOUT_S = 7 * 86_400
MAX_IN_FLIGHT = 1_000_000
MAX_RETRY_DELAY_S = 86_400.0

RetryDelay = float | tuple[float, float] | str


def rate_of(value: str | float | None) -> float | None:
    """A job's rate limit as tasks per second (``"20/s"``, ``"600/m"``, a number);
    None stays None. Raises InvalidInput with one line."""
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError(f"expected a rate like 20/s, got {value!r}")
        return parse_task_rate(str(value))
    except ValueError as exc:
        raise InvalidInput(f"rate: {exc}") from None


def retry_delay_of(value: RetryDelay | None) -> tuple[float, float] | None:
    """A retry delay given as seconds, ``(base, max)`` or the text ``BASE[,MAX]`` as
    (base, max) seconds (a lone BASE: max JOBSYS_RETRY_DELAY_MAX_S, at least BASE);
    None stays None. Raises InvalidInput with one line."""
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, str):
            parts = [float(p) for p in value.split(",")]
        elif isinstance(value, int | float):
            parts = [float(value)]
        else:
            parts = [float(v) for v in value]
    except (TypeError, ValueError):
        raise InvalidInput(f"retry-delay: expected BASE[,MAX] seconds, got {value!r}") from None
    if len(parts) == 1:
        parts.append(max(get_settings().retry_delay_max_s, parts[0]))
    if len(parts) != 2 or not all(math.isfinite(p) for p in parts):
        raise InvalidInput(f"retry-delay: expected BASE[,MAX] seconds, got {value!r}")
    base, cap = parts
    if not 0 <= base <= cap <= MAX_RETRY_DELAY_S:
        raise InvalidInput(
            f"retry-delay: need 0 <= BASE <= MAX <= {MAX_RETRY_DELAY_S:g} s, got {value!r}"
        )
    return base, cap


class SubmitOptions(BaseModel):
    """What a submit may set besides its items; validated before anything is written."""

    pipeline: str = Field(min_length=1, max_length=500)
    name: str = Field(default="", max_length=10_000)
    failure_threshold: float = Field(default=0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    max_deliver: int = Field(ge=1, le=1_000)
    task_timeout_s: float = Field(gt=0, le=MAX_TASK_TIMEOUT_S, allow_inf_nan=False)
    max_in_flight: int | None = Field(default=None, ge=1, le=MAX_IN_FLIGHT)

    @field_validator("pipeline", "name")
    @classmethod
    def _storable(cls, value: str) -> str:
        return storable_text(value)


def _options(**kwargs: object) -> SubmitOptions:
    try:
        return SubmitOptions.model_validate(kwargs)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{field.replace('_', '-')}: {first['msg']}") from None


def submit(
    pipeline: str,
    items: Items,
    *,
    name: str = "",
    failure_threshold: float = 0.0,
    max_deliver: int | None = None,
    task_timeout_s: float | None = None,
    max_in_flight: int | None = None,
    retry_delay: RetryDelay | None = None,
    rate: str | float | None = None,
    priority: int = DEFAULT_PRIORITY,
    weight: int = DEFAULT_WEIGHT,
    on_progress: Callable[[int], None] | None = None,
    on_complete: str | None = None,
    by: Mapping[str, str] | None = None,
) -> Job:
    """Create a job and its tasks in one transaction, enqueue its bootstrap, and return
    its handle.

    `items`: any iterable of dicts or JSON texts (a generator is read as it
    goes, never held whole), or an items file's path (JSON Lines; ``-`` is
    standard input). Each item is checked as it enters (`jobsys.api.items`:
    a JSON object, size, nesting, the NATS server's max_payload). If one
    fails or `items` raises part-way, the transaction rolls back and no job
    exists. `task_timeout_s` (default
    JOBSYS_TASK_TIMEOUT_S) stops a task running longer; `max_in_flight` caps
    the job's delivered, unacknowledged tasks across all processors (default
    JOBSYS_MAX_ACK_PENDING). `retry_delay` is the backoff between deliveries
    of a task that failed transiently: BASE seconds, doubling up to MAX, as
    ``(base, max)``, seconds or ``"BASE[,MAX]"`` (default: the pipeline's
    `retry_delay`, else JOBSYS_RETRY_DELAY_S / JOBSYS_RETRY_DELAY_MAX_S). `rate`
    caps how many of the job's tasks start per second across all processors
    (``"20/s"``, ``"600/m"`` or a number per second), besides its pipeline's
    limit in JOBSYS_RATE_LIMITS.
    `priority` (an integer, default 0) and `weight`
    (an integer >= 1, default 1) are its share of the processors' slots
    (`jobsys.api.share`): higher priority first, then in proportion to weight.
    `on_complete` is a completion hook target (`jobsys.hooks.target.check_target`).
    `by` says who asked (an API token's fingerprint and name); it is written
    into the job's `job_submitted` event.
    """
    settings = get_settings()
    opts = _options(
        pipeline=pipeline,
        name=name,
        failure_threshold=failure_threshold,
        max_deliver=settings.max_deliver if max_deliver is None else max_deliver,
        task_timeout_s=settings.task_timeout_s if task_timeout_s is None else task_timeout_s,
        max_in_flight=max_in_flight,
    )
    delay = retry_delay_of(retry_delay)
    rate_per_s = rate_of(rate)
    priority = check_priority(priority)
    weight = check_weight(weight)
    resolve(opts.pipeline)
    # Checked before anything is written: a job whose bootstrap cannot be sent
    # (unsigned) would wait for the reconciler for nothing.
    require_secret()
    hook = check_target(on_complete) if on_complete is not None else None
    source = items_of(items)
    limit = submit_item_limit()
    row = {
        "name": opts.name,
        "pipeline": opts.pipeline,
        "failure_threshold": opts.failure_threshold,
        "max_deliver": opts.max_deliver,
        "task_timeout_s": opts.task_timeout_s,
        "max_in_flight": opts.max_in_flight,
        "retry_delay_s": delay[0] if delay else None,
        "retry_delay_max_s": delay[1] if delay else None,
        "rate_per_s": rate_per_s,
        "priority": priority,
        "weight": weight,
    }
    submitted: dict[str, Any] = {
        "pipeline": opts.pipeline,
        "failure_threshold": opts.failure_threshold,
        **actor(by),
    }
    listed = _checked_list(source, limit)
    if listed is not None and sum(len(t) for t in listed) <= ONE_STATEMENT_BYTES:
        job_id = _insert_with_tasks(row, hook, listed, submitted)
        if on_progress is not None:
            on_progress(len(listed))
        enqueue_bootstrap(job_id)
        return Job(job_id)
    if listed is not None:
        source = listed  # checked already (checked_items passes them through)
    with connection() as conn, conn.transaction():
        job = conn.execute(Q.insert_job, {**row, "total": 0}).fetchone()
        assert job is not None
        job_id = job["id"]
        if hook is not None:
            params = {"job_id": job_id, "target": hook.target, "shown": hook.shown}
            conn.execute(Q.set_on_complete, params)
        count = 0
        with conn.cursor().copy(Q.copy_tasks) as copy:
            for count, text in enumerate(checked_items(source, limit), start=1):
                copy.write_row((job_id, count - 1, text))
                if on_progress is not None and count % _PROGRESS_EVERY == 0:
                    on_progress(count)
        record_event_with(
            conn, Q.set_job_total_with_event, {"total": count}, job_id, "job_submitted",
            total=count, **submitted,
        )  # fmt: skip
    if on_progress is not None:
        on_progress(count)
    enqueue_bootstrap(job_id)
    return Job(job_id)


def _checked_list(source: Iterable[object], limit: ItemLimit) -> list[ItemText] | None:
    """The items of a list or tuple of at most ONE_STATEMENT_ITEMS, checked; None
    for anything else (checked as they are copied)."""
    if not isinstance(source, list | tuple) or len(source) > ONE_STATEMENT_ITEMS:
        return None
    return list(checked_items(source, limit))


def _insert_with_tasks(
    row: Mapping[str, object],
    hook: HookTarget | None,
    texts: list[ItemText],
    submitted: Mapping[str, Any],
) -> int:
    """The job row, its tasks, hook target and job_submitted event in one
    statement (its own transaction); the job's id."""
    detail = {**submitted, "total": len(texts)}
    params = {
        **row,
        "payloads": texts,
        "hook_target": hook.target if hook is not None else None,
        "hook_shown": hook.shown if hook is not None else None,
        **event_params(None, "job_submitted", **detail),
    }
    with connection() as conn:
        job = conn.execute(Q.insert_job_with_tasks, params).fetchone()
    assert job is not None
    log_event(job["id"], "job_submitted", **detail)
    return int(job["id"])

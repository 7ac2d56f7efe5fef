"""Running one pipeline call: what an execution slot (a child process or a thread) does.

A call is a list of task payloads (JSON bytes) of one job. A plain pipeline
runs them one by one and reports each outcome as soon as it is known, so
that, if the process dies, everything reported before the death stands and
the task it was running is known. A batch pipeline gets them all in one
call and reports one outcome per item, or that the call raised as a whole.

Outcomes are checked here, where they are produced: a result must be
storable (strict JSON object within the size limit, `jobsys.storable`) or
it is that task's failure; error texts are made storable and cut.

This module imports nothing heavy: execution processes load it before
anything else.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobsys import jsontext
from jobsys.errors import PermanentError
from jobsys.pipelines.registry import PipelineSpec
from jobsys.pipelines.resolve import resolve_spec
from jobsys.processor.output import running
from jobsys.storable import encode_result, storable_error, storable_trace

# Outcome kinds of one task.
DONE = "done"  # value: the result (a plain JSON object)
FAILED = "failed"  # value: why (permanent: the task is not retried)
RETRY = "retry"  # value: why (transient: delivered again until max_deliver)

# Reported instead of a per-task outcome when a batch call raised as a whole.
RAISED = -1
# Reported after the last outcome of a call: the slot is free again.
END = -2

# (kind, value, size): `size` is a DONE result's length as JSON, so that
# result batches can be sealed by bytes (jobsys.processor.outbox); 0 otherwise.
Outcome = tuple[str, Any, int]
# report(index, kind, value, size); index RAISED with value (permanent, reason).
Report = Callable[[int, str, Any, int], None]


@dataclass(frozen=True)
class Failure:
    """Why a task failed, when an exception says it: the text stored as its error
    (`reason`), the exception's class (`error_type`, ``module.Name`` unless a
    builtin) and its traceback, cut (`trace`). Its str() is the reason, so it goes
    wherever a reason text goes."""

    reason: str
    error_type: str | None = None
    trace: str | None = None

    def __str__(self) -> str:
        return self.reason

    def retold(self, reason: str) -> Failure:
        """The same failure told differently ("gave up after 5 deliveries: ...")."""
        return Failure(reason, self.error_type, self.trace)


def exception_type(exc: BaseException) -> str:
    """``module.QualName`` of the exception's class; just the name for a builtin."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def failure_of(exc: BaseException, reason: str | None = None) -> Failure:
    """`exc` as a Failure: its description (or `reason`), type and cut traceback
    (without this module's own frame: it starts in the pipeline)."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    try:
        trace = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:  # an exception whose str() raises
        trace = f"{exception_type(exc)} (traceback not readable)"
    return Failure(
        reason if reason is not None else describe_exception(exc),
        exception_type(exc),
        storable_trace(trace),
    )


def describe_exception(exc: BaseException) -> str:
    """`Type: message`, made storable."""
    text = str(exc)
    name = type(exc).__name__
    return storable_error(f"{name}: {text}" if text else name)


def _failure(exc: Exception, spec: PipelineSpec) -> Outcome:
    """A pipeline's exception as an outcome: FAILED if the pipeline gives up on it
    (PermanentError, or its `give_up_on`), else RETRY."""
    if isinstance(exc, PermanentError):
        return FAILED, failure_of(exc, storable_error(str(exc) or "failed")), 0
    return (FAILED if spec.gives_up(exc) else RETRY), failure_of(exc), 0


def _payload(data: bytes) -> dict[str, Any]:
    try:
        payload = jsontext.loads(data)
    except ValueError as exc:
        raise PermanentError(f"task payload is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise PermanentError("task payload is not a JSON object")
    return payload


def checked(value: Any, max_bytes: int, spec: PipelineSpec) -> Outcome:
    """A pipeline's return value as an outcome: done if storable, else failed with why."""
    if isinstance(value, Exception):
        return _failure(value, spec)
    text, error = encode_result(value, max_bytes)
    if text is None:
        return FAILED, storable_error(error), 0
    # Read back: the parent gets plain JSON types, whatever classes the
    # pipeline used (a numpy float is a float subclass json accepts).
    return DONE, jsontext.loads(text), len(text)


class Runner:
    """Runs calls in this process; keeps each batch pipeline's `setup()` result."""

    def __init__(self) -> None:
        self._specs: dict[str, PipelineSpec] = {}
        self._contexts: dict[str, Any] = {}
        # Threads of one process share a Runner: setup() runs once.
        self._setup_lock = threading.Lock()

    def spec(self, name: str) -> PipelineSpec:
        """The pipeline called `name`, resolved once per process."""
        spec = self._specs.get(name)
        if spec is None:
            spec = self._specs[name] = resolve_spec(name)
        return spec

    def context(self, spec: PipelineSpec) -> Any:
        """What the pipeline's `setup()` returned in this process (made on first use)."""
        with self._setup_lock:
            if spec.name not in self._contexts:
                assert spec.setup is not None
                self._contexts[spec.name] = spec.setup()
            return self._contexts[spec.name]

    def run(
        self,
        name: str,
        payloads: list[bytes],
        max_bytes: int,
        report: Report,
        job_id: int | None = None,
        task_nos: tuple[int, ...] = (),
    ) -> None:
        """Run one call and report every outcome (see the module docstring). What the
        pipeline prints or logs is labelled with `job_id` and its task numbers."""
        try:
            spec = self.spec(name)
        except Exception as exc:
            for i in range(len(payloads)):
                report(i, RETRY, storable_error(f"pipeline {name!r} unavailable: {exc}"), 0)
            return
        if spec.is_batch:
            with running(job_id, task_nos):
                self._run_batch(spec, payloads, max_bytes, report)
        else:
            self._run_each(spec, payloads, max_bytes, report, job_id, task_nos)

    def _run_each(
        self,
        spec: PipelineSpec,
        payloads: list[bytes],
        max_bytes: int,
        report: Report,
        job_id: int | None,
        task_nos: tuple[int, ...],
    ) -> None:
        fn = spec.fn
        for i, data in enumerate(payloads):
            with running(job_id, task_nos[i : i + 1]):
                try:
                    outcome = checked(fn(_payload(data)), max_bytes, spec)
                except Exception as exc:
                    outcome = _failure(exc, spec)
            report(i, *outcome)

    def _run_batch(
        self, spec: PipelineSpec, payloads: list[bytes], max_bytes: int, report: Report
    ) -> None:
        items: list[dict[str, Any]] = []
        where: list[int] = []
        for i, data in enumerate(payloads):
            try:
                items.append(_payload(data))
                where.append(i)
            except PermanentError as exc:
                report(i, FAILED, storable_error(str(exc)), 0)
        if not items:
            return
        try:
            if spec.setup is not None:
                values = spec.fn(items, self.context(spec))
            else:
                values = spec.fn(items)
            values = list(values)
            if len(values) != len(items):
                raise PermanentError(
                    f"batch pipeline returned {len(values)} results for {len(items)} items"
                )
        except Exception as exc:
            permanent = spec.gives_up(exc)
            report(RAISED, "raised", (permanent, failure_of(exc)), 0)
            return
        for i, value in zip(where, values, strict=True):
            try:
                outcome = checked(value, max_bytes, spec)
            except Exception as exc:  # a result json cannot even look at
                outcome = FAILED, failure_of(exc), 0
            report(i, *outcome)

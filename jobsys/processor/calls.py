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

import json
import threading
from collections.abc import Callable
from typing import Any

from jobsys.errors import PermanentError
from jobsys.pipelines.registry import PipelineSpec
from jobsys.pipelines.resolve import resolve_spec
from jobsys.storable import encode_result, storable_error

# Outcome kinds of one task.
DONE = "done"  # value: the result (a plain JSON object)
FAILED = "failed"  # value: why (permanent: the task is not retried)
RETRY = "retry"  # value: why (transient: delivered again until max_deliver)

# Reported instead of a per-task outcome when a batch call raised as a whole.
RAISED = -1
# Reported after the last outcome of a call: the slot is free again.
END = -2

Outcome = tuple[str, Any]
# report(index, kind, value); index RAISED with value (permanent, reason).
Report = Callable[[int, str, Any], None]


def describe_exception(exc: BaseException) -> str:
    """`Type: message`, made storable."""
    text = str(exc)
    name = type(exc).__name__
    return storable_error(f"{name}: {text}" if text else name)


def _failure(exc: Exception, spec: PipelineSpec) -> Outcome:
    """A pipeline's exception as an outcome: FAILED if the pipeline gives up on it
    (PermanentError, or its `give_up_on`), else RETRY."""
    if isinstance(exc, PermanentError):
        return FAILED, storable_error(str(exc) or "failed")
    return (FAILED if spec.gives_up(exc) else RETRY), describe_exception(exc)


def _payload(data: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(data)
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
        return FAILED, storable_error(error)
    # Read back: the parent gets plain JSON types, whatever classes the
    # pipeline used (a numpy float is a float subclass json accepts).
    return DONE, json.loads(text)


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

    def run(self, name: str, payloads: list[bytes], max_bytes: int, report: Report) -> None:
        """Run one call and report every outcome (see the module docstring)."""
        try:
            spec = self.spec(name)
        except Exception as exc:
            for i in range(len(payloads)):
                report(i, RETRY, storable_error(f"pipeline {name!r} unavailable: {exc}"))
            return
        if spec.is_batch:
            self._run_batch(spec, payloads, max_bytes, report)
        else:
            self._run_each(spec, payloads, max_bytes, report)

    def _run_each(
        self, spec: PipelineSpec, payloads: list[bytes], max_bytes: int, report: Report
    ) -> None:
        fn = spec.fn
        for i, data in enumerate(payloads):
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
                report(i, FAILED, storable_error(str(exc)))
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
            report(RAISED, "raised", (permanent, describe_exception(exc)))
            return
        for i, value in zip(where, values, strict=True):
            try:
                outcome = checked(value, max_bytes, spec)
            except Exception as exc:  # a result json cannot even look at
                outcome = FAILED, describe_exception(exc)
            report(i, *outcome)

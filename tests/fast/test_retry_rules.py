"""Retry rules of a pipeline: which exceptions fail a task at once. No server."""

from __future__ import annotations

import json

import pytest

from jobsys.errors import PermanentError, TransientError
from jobsys.pipelines.registry import PipelineSpec, pipeline
from jobsys.processor.calls import FAILED, RETRY, Failure, Runner


class QuotaExceeded(Exception):
    pass


def _spec(**rules: object) -> PipelineSpec:
    @pipeline("t", **rules)  # type: ignore[arg-type]
    def fn(payload: dict[str, object]) -> dict[str, object]:
        return payload

    spec = fn.__jobsys_pipeline__  # type: ignore[attr-defined]
    assert isinstance(spec, PipelineSpec)
    return spec


def test_a_pipeline_declaring_nothing_gives_up_on_bad_data_and_bugs_and_retries_the_rest() -> None:
    spec = PipelineSpec("plain", lambda p: p)
    for exc in (
        ValueError("no text"),
        KeyError("path"),
        IndexError(3),
        TypeError("x"),
        AttributeError("x"),
        ZeroDivisionError(),
        FileNotFoundError(2, "No such file"),
        json.JSONDecodeError("x", "doc", 0),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
        PermanentError("no"),
    ):
        assert spec.gives_up(exc), exc
    for exc in (
        ConnectionError("refused"),
        TimeoutError(),
        OSError(5, "I/O error"),
        RuntimeError("x"),
        QuotaExceeded(),
        TransientError("x"),
    ):
        assert not spec.gives_up(exc), exc


def test_the_most_specific_declared_class_decides_and_what_neither_names_gives_up() -> None:
    spec = _spec(retry_on=(ConnectionError, QuotaExceeded), give_up_on=(OSError,))
    assert not spec.gives_up(ConnectionRefusedError())
    assert not spec.gives_up(QuotaExceeded())
    assert spec.gives_up(FileNotFoundError())
    assert spec.gives_up(RuntimeError())
    # Whatever is declared, the two jobsys exceptions mean what they say.
    assert spec.gives_up(PermanentError())
    assert not _spec(give_up_on=(Exception,)).gives_up(TransientError())
    # give_up_on=() retries everything.
    assert not _spec(give_up_on=()).gives_up(ValueError())


def test_rules_that_make_no_sense_are_refused_when_the_pipeline_is_declared() -> None:
    with pytest.raises(ValueError, match="OSError is in both"):
        _spec(retry_on=(OSError,), give_up_on=(OSError,))
    with pytest.raises(ValueError, match="tuple of exception classes"):
        _spec(retry_on=("ConnectionError",))
    with pytest.raises(ValueError, match="0 <= base <= max"):
        _spec(retry_delay=(5, 1))
    assert _spec(retry_delay=(1, 60)).retry_delay == (1.0, 60.0)


def test_a_slot_reports_a_give_up_exception_failed_and_a_transient_one_retry() -> None:
    runner = Runner()
    spec = _spec()
    runner._specs["t"] = spec
    out: list[tuple[int, str, object]] = []

    def report(i: int, kind: str, value: object, size: int) -> None:
        out.append((i, kind, value))

    runner._specs["t"] = PipelineSpec("t", lambda p: p["key"])
    runner.run("t", [b"{}"], 1000, report)
    ((index, kind, failure),) = out
    assert (index, kind, str(failure)) == (0, FAILED, "KeyError: 'key'")
    # The exception's type and a traceback starting in the pipeline, not in jobsys.
    assert isinstance(failure, Failure) and failure.error_type == "KeyError"
    assert failure.trace is not None and failure.trace.endswith("KeyError: 'key'\n")
    assert "calls.py" not in failure.trace and "test_retry_rules.py" in failure.trace
    out.clear()

    def flaky(p: dict[str, object]) -> None:
        raise ConnectionResetError("reset by peer")

    runner._specs["t"] = PipelineSpec("t", flaky)
    runner.run("t", [b"{}"], 1000, report)
    assert [(i, k, str(v)) for i, k, v in out] == [
        (0, RETRY, "ConnectionResetError: reset by peer")
    ]

"""The built-in pipelines: `echo`, `echo-batch` and `sha256`.

They do what their names say. `echo`'s optional payload keys shape a task for
demos and benchmarks: `sleep_ms` sleeps first, `fail: true` fails the task
permanently, `transient: true` fails it transiently on every delivery. The
crash, hang and odd-value vocabulary of the fault tests is not here: it is
`fault-echo` (jobsys.testing.faults), which runs only where
JOBSYS_FAULT_PIPELINES allows it.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from jobsys.errors import PermanentError, TransientError
from jobsys.pipelines.registry import pipeline


def shape(payload: dict[str, Any]) -> None:
    """What `echo`'s optional payload keys ask for, before it returns the payload."""
    sleep_ms = payload.get("sleep_ms")
    if isinstance(sleep_ms, int | float) and sleep_ms > 0:
        time.sleep(sleep_ms / 1000)
    if payload.get("fail") is True:
        raise PermanentError("payload asked to fail")
    if payload.get("transient") is True:
        raise TransientError("payload asked for a transient failure")


@pipeline("echo")
def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """Return the payload (after what its `sleep_ms`, `fail` or `transient` keys ask)."""
    shape(payload)
    return payload


@pipeline("echo-batch", batch_size=64)
def echo_batch(payloads: list[dict[str, Any]]) -> list[Any]:
    """`echo` over a batch in one call: a task asking to fail gets its exception as its
    result, the others their payloads."""
    out: list[Any] = []
    for payload in payloads:
        try:
            shape(payload)
            out.append(payload)
        except Exception as exc:
            out.append(exc)
    return out


@pipeline("sha256")
def sha256(payload: dict[str, Any]) -> dict[str, Any]:
    """Hex SHA-256 of the payload's `data` string."""
    data = payload.get("data")
    if not isinstance(data, str):
        raise PermanentError("sha256 needs a string field 'data'")
    return {"sha256": hashlib.sha256(data.encode("utf-8")).hexdigest()}


BUILTINS = {"echo": echo, "echo-batch": echo_batch, "sha256": sha256}

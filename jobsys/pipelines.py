"""Pipelines: functions from a task payload (dict) to a result (dict).

A pipeline is registered by name with `@pipeline("name")` or given as
``module:function``. Raising `PermanentError` marks the task failed; any other
exception is transient and the task is delivered again (up to max_deliver).
"""

from __future__ import annotations

import hashlib
import importlib
import random
import time
from collections.abc import Callable
from typing import Any

from jobsys.errors import InvalidInput, PermanentError

Pipeline = Callable[[dict[str, Any]], dict[str, Any]]

_REGISTRY: dict[str, Pipeline] = {}


def pipeline(name: str) -> Callable[[Pipeline], Pipeline]:
    """Register a function as the pipeline called `name`."""

    def register(fn: Pipeline) -> Pipeline:
        _REGISTRY[name] = fn
        return fn

    return register


def resolve(name: str) -> Pipeline:
    """The pipeline called `name`, or imported from ``module:function``."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise InvalidInput(f"pipeline {name!r}: cannot import module {module_name!r}") from exc
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise InvalidInput(f"pipeline {name!r}: {module_name} has no function {attr!r}")
        return fn
    known = ", ".join(sorted(_REGISTRY))
    raise InvalidInput(f"unknown pipeline {name!r} (built in: {known}; or use module:function)")


class TransientError(Exception):
    """A failure worth retrying (the `echo` pipeline raises it on request)."""


@pipeline("echo")
def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """Return the payload. Optional keys shape the task for tests and demos:
    `sleep_ms` sleeps first; `fail` fails permanently; `transient` fails
    transiently on every delivery; `transient_p` fails transiently with that
    probability."""
    sleep_ms = payload.get("sleep_ms")
    if isinstance(sleep_ms, int | float) and sleep_ms > 0:
        time.sleep(sleep_ms / 1000)
    if payload.get("fail") is True:
        raise PermanentError("payload asked to fail")
    if payload.get("transient") is True:
        raise TransientError("payload asked for a transient failure")
    p = payload.get("transient_p")
    if isinstance(p, int | float) and random.random() < p:
        raise TransientError(f"transient failure (p={p})")
    return payload


@pipeline("sha256")
def sha256(payload: dict[str, Any]) -> dict[str, Any]:
    """Hex SHA-256 of the payload's `data` string."""
    data = payload.get("data")
    if not isinstance(data, str):
        raise PermanentError("sha256 needs a string field 'data'")
    return {"sha256": hashlib.sha256(data.encode("utf-8")).hexdigest()}

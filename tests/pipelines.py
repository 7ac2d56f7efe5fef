"""Pipelines used by tests, given as ``tests.pipelines:<name>`` (processors import them)."""

from __future__ import annotations

import os
import signal
from typing import Any

from jobsys.errors import PermanentError
from jobsys.pipelines.registry import pipeline
from jobsys.testing.faults import odd_result

# Where `load` appends one line per call: "<pid>\n" (set by the test).
SETUP_LOG_ENV = "JOBSYS_TEST_SETUP_LOG"


def crash(payload: dict[str, Any]) -> dict[str, Any]:
    """SIGKILL the processor running it when the payload asks (`crash: true`)."""
    if payload.get("crash") is True:
        os.kill(os.getpid(), signal.SIGKILL)
    return payload


def load() -> dict[str, Any]:
    """A batch pipeline's setup, as loading a model would be: once per execution process."""
    path = os.environ.get(SETUP_LOG_ENV)
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
    return {"pid": os.getpid(), "scale": 10}


@pipeline("tests-scale", batch_size=8, setup=load, batch_wait_s=0.05)
def scale(payloads: list[dict[str, Any]], model: dict[str, Any]) -> list[Any]:
    """Multiply each payload's `n` by the model's scale. A payload with `poison`
    makes the whole call raise (transiently, or permanently if `poison` is
    "permanent"), as a batch that one bad input breaks would."""
    for p in payloads:
        if p.get("poison") == "permanent":
            raise PermanentError("a poisoned item broke the batch")
        if p.get("poison"):
            raise RuntimeError("a poisoned item broke the batch")
    return [{"n": p["n"], "scaled": p["n"] * model["scale"], "pid": model["pid"]} for p in payloads]


def odd_values(payload: dict[str, Any]) -> dict[str, Any]:
    """Return (or fail with) a value that is hard to store, as the payload's `odd` asks:
    `nan`/`inf` results, a `nul` or a `long_error` PermanentError; else the payload.
    (The built-in `echo` honours the same key; this stays for tests that name it.)"""
    return odd_result(payload)


def read_file(payload: dict[str, Any]) -> dict[str, Any]:
    """Read the file the payload names: a missing file raises FileNotFoundError, a
    transient error as far as jobsys knows (delivered again until max_deliver)."""
    with open(payload["path"], encoding="utf-8") as f:
        return {"text": f.read()}

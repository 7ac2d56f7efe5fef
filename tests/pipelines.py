"""Pipelines used by tests, given as ``tests.pipelines:<name>`` (processors import them)."""

from __future__ import annotations

import logging
import os
import signal
import time
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


@pipeline("tests-read-file", give_up_on=())
def read_file(payload: dict[str, Any]) -> dict[str, Any]:
    """Read the file the payload names: a missing file raises FileNotFoundError, which
    this pipeline declares transient (``give_up_on=()``: delivered again until max_deliver)."""
    with open(payload["path"], encoding="utf-8") as f:
        return {"text": f.read()}


def read_file_plainly(payload: dict[str, Any]) -> dict[str, Any]:
    """`read_file` declaring nothing: a missing file (FileNotFoundError) or a missing
    `path` key (KeyError) is given up on at once by default."""
    with open(payload["path"], encoding="utf-8") as f:
        return {"text": f.read()}


class QuotaExceeded(Exception):
    """A pipeline's own exception (a service said no for now)."""


@pipeline("tests-fetch", retry_on=(ConnectionError, QuotaExceeded), give_up_on=(OSError,))
def fetch(payload: dict[str, Any]) -> dict[str, Any]:
    """Fail as the payload's `raise` asks: "refused" (ConnectionError: retried, the most
    specific match), "quota" (retried), "missing" (FileNotFoundError, an OSError: given
    up), "bug" (RuntimeError: named by neither, given up)."""
    kind = payload.get("raise")
    if kind == "refused":
        raise ConnectionRefusedError(111, "Connection refused")
    if kind == "quota":
        raise QuotaExceeded("quota of 50/s used up")
    if kind == "missing":
        raise FileNotFoundError(2, "No such file or directory", payload.get("path", "?"))
    if kind == "bug":
        raise RuntimeError("a bug")
    return payload


@pipeline("tests-screen", batch_size=8, batch_wait_s=0.05)
def screen(payloads: list[dict[str, Any]]) -> list[Any]:
    """The README's batch example without its setup: an item without `text` fails with
    ValueError("no text"), which a pipeline declaring nothing gives up on at once."""
    return [
        {"hits": p["text"].count("x")} if "text" in p else ValueError("no text") for p in payloads
    ]


# Where `flaky` appends one line per delivery: "<n> <epoch seconds>" (set by the test).
DELIVERY_LOG_ENV = "JOBSYS_TEST_DELIVERY_LOG"


def flaky(payload: dict[str, Any]) -> dict[str, Any]:
    """A service that is down: records when this delivery started, then raises
    ConnectionError (retried by default)."""
    path = os.environ.get(DELIVERY_LOG_ENV)
    if path:
        with open(path, "a") as f:
            f.write(f"{payload.get('n')} {time.time()}\n")
    raise ConnectionError("service unavailable")


def three_causes(payload: dict[str, Any]) -> dict[str, Any]:
    """Fail for one of three causes, with details that differ per task (a path, a
    key, an object's address), as real failures do; print and log a line first."""
    n = payload["n"]
    print(f"pipeline says: working on item {n}")
    logging.getLogger("tests.three_causes").warning("pipeline logs: item %d", n)
    cause = n % 3
    if cause == 0:
        with open(f"/nonexistent/jobsys/photos/{n}.jpg", "rb") as f:
            return {"size": len(f.read())}
    if cause == 1:
        return {"value": payload[f"field_{n}"]}
    raise ValueError(f"cannot use {object()!r} for item {n}")


# How long a `stamp` task takes.
STAMP_S = 0.05


def stamp(payload: dict[str, Any]) -> dict[str, Any]:
    """Take STAMP_S (a slot busy that long) and return when it started (wall clock),
    so a test can tell from the results which job had the slots when."""
    started = time.time()
    time.sleep(STAMP_S)
    return {"n": payload.get("n"), "started": started}


# `down_for_a_while`'s own retry delay (BASE, MAX seconds): far above the suite's
# JOBSYS_RETRY_DELAY_S, so a test can tell whose delay a redelivery waited.
PIPELINE_RETRY_S = (4.0, 60.0)


@pipeline("tests-down-for-a-while", retry_delay=PIPELINE_RETRY_S)
def down_for_a_while(payload: dict[str, Any]) -> dict[str, Any]:
    """A service down for its first delivery: appends when each delivery started to
    the file the payload's `log` names, raises ConnectionError (retried by default)
    the first time and returns the delivery times after."""
    path = payload["log"]
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{time.time()}\n")
    with open(path, encoding="utf-8") as f:
        times = [float(line) for line in f.read().split()]
    if len(times) == 1:
        raise ConnectionError("service unavailable")
    return {"deliveries": times}


class BadRecord(ValueError):
    """A pipeline's own exception for bad data (a ValueError: given up on by default)."""


def fails_as_asked(payload: dict[str, Any]) -> dict[str, Any]:
    """Raise what the payload's `raise` names: "permanent" (PermanentError), "value"
    (ValueError), "own" (BadRecord, this module's) or "transient" (ConnectionError,
    retried until the job's max_deliver)."""
    kind = payload.get("raise")
    if kind == "permanent":
        raise PermanentError("no such record")
    if kind == "value":
        raise ValueError("bad value 'x'")
    if kind == "own":
        raise BadRecord("record 7 is short")
    if kind == "transient":
        raise ConnectionError("service unavailable")
    return payload

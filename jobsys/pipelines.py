"""Pipelines: functions from a task payload (dict) to a result (dict).

A pipeline is one of the built-ins registered here with `@pipeline("name")`,
one an installed package declares under the entry-point group
``jobsys.pipelines``, or ``module:function`` under a module prefix of
``JOBSYS_PIPELINE_MODULES``: allowed, not merely importable (jobsys.allow;
`resolve` checks before it imports anything). Raising `PermanentError` marks
the task failed; any other exception is transient and the task is delivered
again (up to max_deliver). `@pipeline` on a function of an allowed module
gives it a batch size and setup; its name is not a way to reach it.

A batch pipeline, `@pipeline("name", batch_size=64, setup=load)`, takes a
list of payloads (and, when it has a `setup`, what `setup()` returned, made
once per execution process: a loaded model) and returns one result per
payload, where a result may be an exception instance (that task's own
failure). The processor groups up to `batch_size` tasks of one job, waiting
at most `batch_wait_s` for a batch to fill (see jobsys.processor).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobsys.allow import check_reference, declared_pipelines
from jobsys.errors import InvalidInput, PermanentError

Pipeline = Callable[..., Any]

# How long a batch pipeline's tasks wait for a batch to fill, by default.
DEFAULT_BATCH_WAIT_S = 0.05
# The attribute `@pipeline` sets on a function, so ``module:function`` finds
# its batch size and setup too.
SPEC_ATTR = "__jobsys_pipeline__"


@dataclass(frozen=True)
class PipelineSpec:
    """How to call a pipeline: one payload per call, or a batch of up to `batch_size`."""

    name: str
    fn: Pipeline
    batch_size: int | None = None
    setup: Callable[[], Any] | None = None
    batch_wait_s: float = DEFAULT_BATCH_WAIT_S

    @property
    def is_batch(self) -> bool:
        """Whether the function takes a list of payloads."""
        return self.batch_size is not None


_REGISTRY: dict[str, Pipeline] = {}


def pipeline(
    name: str,
    *,
    batch_size: int | None = None,
    setup: Callable[[], Any] | None = None,
    batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
) -> Callable[[Pipeline], Pipeline]:
    """Register a function as the pipeline called `name`.

    With `batch_size`, the function takes ``(payloads)`` -- or
    ``(payloads, context)`` when `setup` is given, `context` being what
    `setup()` returned in this execution process -- and returns a list with
    one result (or exception) per payload.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if setup is not None and batch_size is None:
        raise ValueError("setup is for batch pipelines (give batch_size too)")

    def register(fn: Pipeline) -> Pipeline:
        spec = PipelineSpec(name, fn, batch_size, setup, batch_wait_s)
        setattr(fn, SPEC_ATTR, spec)
        _REGISTRY[name] = fn
        return fn

    return register


def resolve(name: str) -> Pipeline:
    """The allowed pipeline called `name`: built in, declared by an installed package
    (entry point), or ``module:function`` under JOBSYS_PIPELINE_MODULES.

    Raises InvalidInput (jobsys.allow.NotAllowed when it is not allowed) with
    one line; a module that is not allowed is never imported.
    """
    if name in _BUILTINS:
        return _BUILTINS[name]
    declared = declared_pipelines()
    if name in declared:
        try:
            fn = declared[name].load()
        except Exception as exc:
            raise InvalidInput(
                f"pipeline {name!r}: cannot load {declared[name].value!r}: {exc}"
            ) from None
        if not callable(fn):
            raise InvalidInput(f"pipeline {name!r}: {declared[name].value!r} is not a function")
        return fn
    if ":" in name:
        module_name, attr = check_reference(name, "pipeline")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise InvalidInput(f"pipeline {name!r}: cannot import module {module_name!r}") from exc
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise InvalidInput(f"pipeline {name!r}: {module_name} has no function {attr!r}")
        return fn
    known = ", ".join(sorted(_BUILTINS))
    extra = f"; declared by installed packages: {', '.join(sorted(declared))}" if declared else ""
    raise InvalidInput(
        f"unknown pipeline {name!r} (built in: {known}{extra}; or module:function "
        "under JOBSYS_PIPELINE_MODULES)"
    )


def resolve_spec(name: str) -> PipelineSpec:
    """How to call the pipeline called `name` (registered or ``module:function``)."""
    fn = resolve(name)
    spec = getattr(fn, SPEC_ATTR, None)
    if isinstance(spec, PipelineSpec):
        return spec
    return PipelineSpec(name, fn)


class TransientError(Exception):
    """A failure worth retrying (the `echo` pipeline raises it on request)."""


# Ways a task can kill the process running it (`crash` payload key).
CRASH_KINDS = ("kill", "exit", "segfault")
# Values hard to store that a task can ask for (`odd` payload key): a NaN or an
# Infinity in its result, a failure whose text holds a NUL, or one far longer
# than an error text is kept (jobsys.storable.MAX_ERROR_CHARS).
ODD_KINDS = ("nan", "inf", "nul", "long_error")
LONG_ERROR_CHARS = 20_000


def _crash(kind: object) -> None:
    """Kill this process as a broken pipeline would: a signal, os._exit, a segfault."""
    if kind is True or kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
    elif kind == "exit":
        os._exit(3)
    elif kind == "segfault":
        ctypes.string_at(0)  # reads address 0: SIGSEGV


def _shape(payload: dict[str, Any]) -> None:
    """What `echo`'s optional payload keys ask for, before it returns the payload."""
    sleep_ms = payload.get("sleep_ms")
    if isinstance(sleep_ms, int | float) and sleep_ms > 0:
        time.sleep(sleep_ms / 1000)
    hang_s = payload.get("hang_s")
    if isinstance(hang_s, int | float) and hang_s > 0:
        time.sleep(hang_s)
    elif payload.get("hang") is True:
        while True:  # never returns: only a time limit stops it
            time.sleep(3600)
    if payload.get("crash") not in (None, False):
        _crash(payload["crash"])
    if payload.get("fail") is True:
        raise PermanentError("payload asked to fail")
    if payload.get("transient") is True:
        raise TransientError("payload asked for a transient failure")
    p = payload.get("transient_p")
    if isinstance(p, int | float) and random.random() < p:
        raise TransientError(f"transient failure (p={p})")


def odd_result(payload: dict[str, Any]) -> dict[str, Any]:
    """What the payload's `odd` key asks for (`ODD_KINDS`): a result holding NaN
    (`{"mean": NaN}`) or Infinity (`{"max": inf}`), a `PermanentError` whose
    text holds a NUL, or one of LONG_ERROR_CHARS characters; else the payload."""
    odd = payload.get("odd")
    if odd == "nan":
        return {"mean": float("nan")}
    if odd == "inf":
        return {"max": float("inf")}
    if odd == "nul":
        raise PermanentError("bad\x00byte")
    if odd == "long_error":
        raise PermanentError("e" * LONG_ERROR_CHARS)
    return payload


@pipeline("echo")
def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """Return the payload. Optional keys shape the task for tests and demos:
    `sleep_ms` sleeps first; `hang_s` sleeps that many seconds (a hung call
    when longer than the job's task timeout); `hang: true` never returns;
    `crash` kills the process running it (`"kill"` SIGKILL, `"exit"`
    os._exit(3), `"segfault"` a real SIGSEGV; `true` means `"kill"`); `fail`
    fails permanently; `transient` fails transiently on every delivery;
    `transient_p` fails transiently with that probability; `odd` returns or
    raises a value hard to store (`"nan"`, `"inf"`, `"nul"`, `"long_error"`:
    see `odd_result`)."""
    _shape(payload)
    return odd_result(payload)


@pipeline("echo-batch", batch_size=64)
def echo_batch(payloads: list[dict[str, Any]]) -> list[Any]:
    """`echo` over a batch in one call, honouring the same payload keys: a task
    asking to fail or fail transiently gets its exception as its result; one
    asking to crash or hang does so for the whole call (the processor splits
    the batch to find it)."""
    out: list[Any] = []
    for payload in payloads:
        try:
            _shape(payload)
            out.append(odd_result(payload))
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


# The built-ins, as registered above: a module registering one of these names
# later does not replace it.
_BUILTINS: dict[str, Pipeline] = dict(_REGISTRY)

"""The fault-injecting pipelines `fault-echo` and `fault-echo-batch`: `echo`, plus payload
keys that crash, hang or return values hard to store, for the crash tests, the
chaos suite and anyone checking a deployment's failure handling.

They run only where ``JOBSYS_FAULT_PIPELINES=true`` (jobsys.pipelines.resolve
refuses them otherwise): a production processor never segfaults on request.

Payload keys, besides echo's `sleep_ms`, `fail` and `transient`:
`hang_s` sleeps that many seconds (a hung call when longer than the job's
task timeout); `hang: true` never returns; `crash` kills the process running
it (`"kill"` SIGKILL, `"exit"` os._exit(3), `"segfault"` a real SIGSEGV;
`true` means `"kill"`); `give_up: true` raises ValueError, which a
pipeline declaring no retry rules gives up on at once; `transient_p` fails
transiently with that probability; `odd` returns or raises a value hard to store (`ODD_KINDS`).
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import time
from typing import Any

from jobsys.errors import PermanentError, TransientError

# Ways a task can kill the process running it (`crash` payload key).
CRASH_KINDS = ("kill", "exit", "segfault")
# Values hard to store that a task can ask for (`odd` payload key): a NaN or an
# Infinity in its result, a failure whose text holds a NUL, or one far longer
# than an error text is kept (jobsys.storable.MAX_ERROR_CHARS).
ODD_KINDS = ("nan", "inf", "nul", "long_error")
LONG_ERROR_CHARS = 20_000
# What a `give_up: true` task raises (a ValueError: failed at its first delivery).
GIVE_UP_TEXT = "payload asked to give up"
# A `hang: true` task sleeps in steps of this long, for ever.
HANG_STEP_S = 3600


def _crash(kind: object) -> None:
    """Kill this process as a broken pipeline would: a signal, os._exit, a segfault."""
    if kind is True or kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
    elif kind == "exit":
        os._exit(3)
    elif kind == "segfault":
        ctypes.string_at(0)  # reads address 0: SIGSEGV


def shape(payload: dict[str, Any]) -> None:
    """What the payload's keys ask for, before the task returns (see the module docstring)."""
    sleep_ms = payload.get("sleep_ms")
    if isinstance(sleep_ms, int | float) and sleep_ms > 0:
        time.sleep(sleep_ms / 1000)
    hang_s = payload.get("hang_s")
    if isinstance(hang_s, int | float) and hang_s > 0:
        time.sleep(hang_s)
    elif payload.get("hang") is True:
        while True:  # never returns: only a time limit stops it
            time.sleep(HANG_STEP_S)
    if payload.get("crash") not in (None, False):
        _crash(payload["crash"])
    if payload.get("fail") is True:
        raise PermanentError("payload asked to fail")
    if payload.get("give_up") is True:
        raise ValueError(GIVE_UP_TEXT)
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


def fault_echo(payload: dict[str, Any]) -> dict[str, Any]:
    """`echo` with the fault vocabulary of the module's docstring."""
    shape(payload)
    return odd_result(payload)


def fault_echo_batch(payloads: list[dict[str, Any]]) -> list[Any]:
    """`fault_echo` over a batch in one call: a task asking to fail (or fail
    transiently) gets its exception as its result; one asking to crash or hang
    does so for the whole call (the processor splits the batch to find it)."""
    out: list[Any] = []
    for payload in payloads:
        try:
            shape(payload)
            out.append(odd_result(payload))
        except Exception as exc:
            out.append(exc)
    return out

"""Pipelines used by tests, given as ``tests.pipelines:<name>`` (processors import them)."""

from __future__ import annotations

import os
import signal
from typing import Any


def crash(payload: dict[str, Any]) -> dict[str, Any]:
    """SIGKILL the processor running it when the payload asks (`crash: true`)."""
    if payload.get("crash") is True:
        os.kill(os.getpid(), signal.SIGKILL)
    return payload

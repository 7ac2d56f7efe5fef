"""Which event loop jobsys's asyncio code runs on (jobsys.loops)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from jobsys import loops
from jobsys.settings import reset_settings


async def _kind() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_uvloop_by_default_and_the_standard_loop_when_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JOBSYS_UVLOOP", raising=False)
    reset_settings()
    loop = loops.new_event_loop()
    assert isinstance(loop, uvloop.Loop)
    loop.close()
    assert loops.run(_kind()) == "uvloop"

    monkeypatch.setenv("JOBSYS_UVLOOP", "false")
    reset_settings()
    loop = loops.new_event_loop()
    assert not isinstance(loop, uvloop.Loop)
    loop.close()
    assert loops.run(_kind()) == "asyncio"
    monkeypatch.undo()
    reset_settings()

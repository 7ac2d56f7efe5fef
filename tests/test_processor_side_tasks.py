"""A processor's helper loop that dies stops the processor loudly, never silently.

Regression: the hold loop (re-sending and keeping results alive) could die
on an exception and every resend ended for the life of the process.
"""

from __future__ import annotations

import asyncio

import pytest

from jobsys.processor import Processor


async def _boom() -> None:
    await asyncio.sleep(0.05)
    raise RuntimeError("a helper loop broke")


def test_a_side_task_that_dies_stops_the_processor_with_its_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    processor = Processor(concurrency=1, pool="threads")

    async def scenario() -> None:
        run = asyncio.create_task(processor.run())
        while not hasattr(processor, "feeds"):
            await asyncio.sleep(0.01)
        processor._watch("boom", _boom())
        await asyncio.wait_for(run, timeout=30)

    asyncio.run(scenario())
    assert processor.fatal == "boom"
    assert any(
        r.getMessage().startswith("processor side task died") and getattr(r, "task", "") == "boom"
        for r in caplog.records
    )

"""Deleting a namespace's streams reaches every page of the server's listing.

nats-py's `streams_info()` answers one page (256 streams): the suite's and the
benches' clean-ups that used it left streams behind whenever the shared server
held more (a 10,000-job bench left 9,492 of its streams)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from nats.js.api import StorageType, StreamConfig

from jobsys.nats.admin import all_streams_info, delete_streams, namespace_stream
from jobsys.nats.bridge import bridge
from jobsys.settings import get_settings

# More than one page of the server's listing (256), in memory: no open files.
STREAMS = 300


def test_every_stream_of_a_namespace_is_deleted_past_the_first_page() -> None:
    ns = f"{get_settings().namespace}c{uuid.uuid4().hex[:6]}"
    other = f"{ns}x_job_1"  # another namespace whose name starts like this one's

    async def run(nc: Any, js: Any) -> tuple[int, list[str]]:
        names = [f"{ns}_job_{i}" for i in range(STREAMS)] + [f"KV_{ns}_members", other]
        sem = asyncio.Semaphore(32)

        async def make(name: str) -> None:
            async with sem:
                await js.add_stream(
                    StreamConfig(name=name, subjects=[f"{name}.x"], storage=StorageType.MEMORY)
                )

        await asyncio.gather(*(make(n) for n in names))
        deleted = await delete_streams(js, namespace_stream(ns))
        left = [i.config.name for i in await all_streams_info(js) if ns in (i.config.name or "")]
        await js.delete_stream(other)
        return deleted, left

    deleted, left = bridge().run(run, timeout=120)
    assert deleted == STREAMS + 1
    assert left == [other]

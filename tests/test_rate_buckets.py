"""The shared token buckets of rate limits, on the real Redis."""

from __future__ import annotations

import asyncio
import uuid

from jobsys.dramatiq.rate_buckets import Bucket, RateBuckets
from jobsys.settings import get_settings


def test_buckets_give_their_burst_then_refill_at_their_rate_and_the_tightest_wins() -> None:
    tag = uuid.uuid4().hex[:8]
    job = Bucket(f"{get_settings().namespace}-rate:test:{tag}:job", rate=10.0, capacity=5)
    pipe = Bucket(f"{get_settings().namespace}-rate:test:{tag}:pipe", rate=1.0, capacity=2)

    async def scenario() -> None:
        buckets = RateBuckets(get_settings())
        try:
            assert await buckets.take([job], 100) == (5, 0.0)  # the burst
            granted, wait_s = await buckets.take([job], 1)
            assert granted == 0 and 0 < wait_s <= 0.1  # one token per 0.1 s
            await asyncio.sleep(0.35)
            granted, _ = await buckets.take([job], 100)
            assert 3 <= granted <= 5  # refilled at its rate (never above the burst)
            # Two buckets: what both can give; each pays it.
            granted, _ = await buckets.take([job, pipe], 100)
            assert granted <= 2
        finally:
            await buckets.close()

    asyncio.run(scenario())

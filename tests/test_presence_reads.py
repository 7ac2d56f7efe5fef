"""A read of the presence bucket sees every member it holds, every time.

The CLI's `processors`, `top`, `doctor`, `status`'s `blocked` and the
reconciler each judge from one read. A read that now and then comes back
empty (the bucket's entries still on their way when the read decides it has
seen them all) made a running deployment look like it had no processor.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from jobsys.nats.connect import connect, jetstream
from jobsys.nats.presence import Member, announce, bucket_name, open_bucket, read_members
from jobsys.settings import get_settings

MEMBERS = 200
READS = 300
# A read that has not ended by then never will (it waits for a quiet bucket).
READ_LIMIT_S = 20


def test_every_read_of_the_bucket_sees_every_member() -> None:
    settings = get_settings().model_copy(update={"namespace": f"r{uuid.uuid4().hex[:8]}"})

    async def run() -> list[int]:
        nc = await connect()
        js = jetstream(nc)
        try:
            bucket = await open_bucket(js, settings, create=True)
            assert bucket is not None
            for n in range(MEMBERS):
                await announce(bucket, Member(
                    kind="processor", id=f"p{n}", host="h", pid=n, version="t",
                    started_at=datetime.now(UTC),
                ))  # fmt: skip

            # Reads from their own connection each, as the CLI's are, some at once.
            async def one() -> int:
                reader = await connect()
                try:
                    read = read_members(jetstream(reader), settings)
                    return len(await asyncio.wait_for(read, READ_LIMIT_S))
                except TimeoutError:
                    return -1  # a read that never ends
                finally:
                    await reader.close()

            # Members go on beating while they are read, as they do.
            beating = True

            async def beat() -> None:
                n = 0
                while beating:
                    await announce(bucket, Member(
                        kind="processor", id=f"p{n % MEMBERS}", host="h", pid=n % MEMBERS,
                        version="t", started_at=datetime.now(UTC),
                    ))  # fmt: skip
                    n += 1

            beaters = [asyncio.create_task(beat()) for _ in range(4)]
            seen: list[int] = []
            try:
                for _ in range(READS // 10):
                    seen += await asyncio.gather(*(one() for _ in range(10)))
            finally:
                beating = False
                await asyncio.gather(*beaters)
            return seen
        finally:
            await js.delete_key_value(bucket_name(settings.namespace))
            await nc.close()

    seen = asyncio.run(run())
    short = [n for n in seen if n != MEMBERS]
    assert not short, f"{len(short)} of {READS} reads did not see each member once: {short[:10]}"

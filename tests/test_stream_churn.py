"""Other streams coming and going never cost a live job anything.

Regression (issue 20): processors paged through the account's stream listing
by offset and dropped every feed they did not see. With hundreds of other
streams sorting before job X's being deleted and re-created meanwhile, a
page boundary slid over X's stream, the processor "stopped serving" X while
its stream existed and dropped its queued tasks without a nak: each came
back after ack_wait charged a delivery (with `--max-deliver 1` and no
delivery slack, lost; the job failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

import pytest
from nats.js.api import StorageType
from nats.js.errors import NotFoundError

import jobsys
from jobsys.api.read import wait_until_final
from jobsys.nats.admin import all_streams_info
from jobsys.nats.connect import connect, jetstream
from jobsys.nats.subjects import JobNames, tasks_wildcard
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import connection
from jobsys.settings import get_settings
from tests.helpers import assert_counters_match_ledger

# The server lists streams in pages of this many, sorted by name.
PAGE = 256
TASKS = 15_000  # about 20 s on 8 slots: many listings happen meanwhile
FINAL_WITHIN_S = 120
RECOUNT_EVERY = 10  # churn cycles between two recounts of the streams before X
# Each cycle deletes this many of the other streams and re-creates them: X's
# place sweeps over this many places either side of the page boundary, which
# covers streams others create or delete meanwhile.
SWEEP = 4
# X's place stays this long on each side of the boundary (a listing's pages
# are a few milliseconds apart).
DWELL_S = 0.01


def churn_name(i: int) -> str:
    """Sorts before every job stream of the namespace (`<ns>_job_<digits>`), and is
    none (it names no job). Its subject is under the namespace's task subjects,
    so a listing of the namespace's job streams holds it too."""
    return f"{get_settings().namespace}_job_0churn{i:04d}"


def fill_name(i: int) -> str:
    """Sorts before X's stream too, but its subject is not a task subject: only a
    listing of the whole account holds it."""
    return f"{get_settings().namespace}_job_0fill{i:04d}"


async def churn(x_stream: str, stop: threading.Event, cycles: list[int]) -> None:
    """Keep 256+ other streams sorting before X's, as many as put X at the top of
    a listing page (give or take SWEEP / 2) in a listing of the namespace's job
    streams and in one of the whole account alike, and delete and re-create
    SWEEP of them over and over: X's place in either listing slides across the
    page boundary and back all the time."""
    nc = await connect(name="churn")
    js = jetstream(nc)
    ns = get_settings().namespace
    made: dict[str, set[int]] = {"churn": set(), "fill": set()}
    ours = (churn_name(0)[:-4], fill_name(0)[:-4])

    async def make(kind: str, i: int) -> None:
        name, subject = (
            (churn_name(i), f"{ns}.tasks.churn{i}")
            if kind == "churn"
            else (fill_name(i), f"{ns}.fill.{i}")
        )
        await js.add_stream(name=name, subjects=[subject], storage=StorageType.MEMORY)
        made[kind].add(i)

    async def unmake(kind: str, i: int) -> None:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(churn_name(i) if kind == "churn" else fill_name(i))
        made[kind].discard(i)

    async def before_x(subject: str | None) -> int:
        names = [info.config.name or "" for info in await all_streams_info(js, subject)]
        return sum(1 for n in names if n < x_stream and not n.startswith(ours))

    async def keep(kind: str, want: int) -> None:
        for i in range(want):
            if i not in made[kind]:
                await make(kind, i)
        for i in [i for i in made[kind] if i >= want]:
            await unmake(kind, i)

    try:
        while not stop.is_set():
            # Streams of other runs sort before X too: count them, in either
            # kind of listing, and fill X's page up to the boundary.
            churned = PAGE + (SWEEP // 2 - await before_x(tasks_wildcard(ns))) % PAGE
            await keep("churn", churned)
            await keep("fill", (SWEEP // 2 - churned - await before_x(None)) % PAGE)
            for _ in range(RECOUNT_EVERY):
                for i in range(SWEEP):
                    await unmake("churn", i)
                await asyncio.sleep(DWELL_S)
                for i in range(SWEEP):
                    await make("churn", i)
                await asyncio.sleep(DWELL_S)
                cycles[0] += 1
    finally:
        for kind, made_of_kind in made.items():
            for i in list(made_of_kind):
                with contextlib.suppress(Exception):
                    await unmake(kind, i)
        await nc.close()


@pytest.mark.timeout(600)
def test_a_max_deliver_1_job_loses_nothing_while_other_streams_churn(tmp_path: Path) -> None:
    stop = threading.Event()
    cycles = [0]
    with LocalSystem(workers=1, processors=1, concurrency=8, log_dir=tmp_path):
        job = jobsys.submit("echo", [{"i": i, "sleep_ms": 10} for i in range(TASKS)], max_deliver=1)
        x_stream = JobNames.of(get_settings().namespace, job.id).stream
        churner = threading.Thread(
            target=lambda: asyncio.run(churn(x_stream, stop, cycles)), daemon=True
        )
        churner.start()
        try:
            view = wait_until_final(job.id, timeout=FINAL_WITHIN_S)
        finally:
            stop.set()
            churner.join(timeout=60)
    assert cycles[0] >= 1, "the other streams never churned"
    assert (view.status, view.lost, view.done) == ("success", 0, TASKS)
    assert_counters_match_ledger(job.id)
    # Nothing here fails or crashes: a second delivery means a live feed was
    # dropped with its tasks (the consumer's delivery slack then saves them).
    with connection() as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM job_tasks WHERE job_id = %(job_id)s AND deliveries > 1",
            {"job_id": job.id},
        ).fetchone()
    assert row is not None and row["n"] == 0, f"{row} tasks charged an extra delivery"

"""A big job's CREATED notice goes once its first tasks are stored, not its whole
first chunk (jobsys.bootstrap.fill).

Issue 26: timed on a 20,000-task job, the notice went 75 ms after the first
task was published, when all 5,000 tasks of the first chunk were stored;
the processor sat idle that long at the start of every big job. It now goes
once ANNOUNCE_AFTER tasks are stored: a processor's first pull still finds
that many at once (the reason it waits at all), and the rest follow it.

Shown by wire order: the worker publishes the tasks and the notice on one
connection, so a subscriber to both sees how many tasks went before it.
"""

from __future__ import annotations

import asyncio
import threading

from nats.aio.msg import Msg

import jobsys
from jobsys.api.items import counted_items
from jobsys.bootstrap.fill import ANNOUNCE_AFTER, PUBLISH_CHUNK
from jobsys.bootstrap.start import run_bootstrap
from jobsys.nats.bridge import bridge
from jobsys.nats.connect import connect
from jobsys.nats.subjects import JobNames
from jobsys.settings import get_settings

TASKS = 2 * PUBLISH_CHUNK + 10  # three chunks


class WireOrder:
    """How many task messages of one job went by before its CREATED notice."""

    def __init__(self, names: JobNames) -> None:
        self.names = names
        self.tasks_seen = 0
        self.before_notice: int | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        nc = await connect()

        async def on_task(msg: Msg) -> None:
            self.tasks_seen += 1

        async def on_notice(msg: Msg) -> None:
            if self.before_notice is None:
                self.before_notice = self.tasks_seen

        # One subscription per subject, both on this connection: NATS hands
        # them over in the order the worker's one connection sent them.
        await nc.subscribe(self.names.subject, cb=on_task)
        await nc.subscribe(self.names.notice("CREATED"), cb=on_notice)
        await nc.flush()
        self._ready.set()
        while not self._stop.is_set():
            await asyncio.sleep(0.02)
        await nc.flush()
        await nc.close()

    def __enter__(self) -> WireOrder:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_a_big_jobs_notice_goes_once_its_first_tasks_are_stored_not_its_first_chunk() -> None:
    job = jobsys.submit("echo", counted_items(TASKS))
    names = JobNames.of(get_settings().namespace, job.id)
    try:
        with WireOrder(names) as wire:
            assert run_bootstrap(job.id) == "published"
        assert wire.tasks_seen == TASKS
        assert wire.before_notice is not None, "no CREATED notice"
        # Not before the first pull could find ANNOUNCE_AFTER tasks...
        assert wire.before_notice >= ANNOUNCE_AFTER
        # ...and long before the first chunk was all stored (it used to wait for it).
        assert wire.before_notice < PUBLISH_CHUNK, wire.before_notice
    finally:
        bridge().run(lambda nc, js: js.delete_stream(names.stream))

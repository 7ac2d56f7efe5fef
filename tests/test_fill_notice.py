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

from nats.aio.msg import Msg

import jobsys
from jobsys.api.items import counted_items
from jobsys.bootstrap.fill import ANNOUNCE_AFTER, PUBLISH_CHUNK
from jobsys.bootstrap.start import run_bootstrap
from jobsys.nats.bridge import bridge
from jobsys.nats.subjects import JobNames
from jobsys.settings import get_settings
from tests.helpers import Subscriber

TASKS = 2 * PUBLISH_CHUNK + 10  # three chunks


class WireOrder(Subscriber):
    """How many task messages of one job went by before its CREATED notice: one
    subscription per subject, both on one connection, so NATS hands them over
    in the order the worker's one connection sent them."""

    def __init__(self, names: JobNames) -> None:
        self.tasks_seen = 0
        self.before_notice: int | None = None
        super().__init__({names.subject: self._on_task, names.notice("CREATED"): self._on_notice})

    def _on_task(self, msg: Msg) -> None:
        self.tasks_seen += 1

    def _on_notice(self, msg: Msg) -> None:
        if self.before_notice is None:
            self.before_notice = self.tasks_seen


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

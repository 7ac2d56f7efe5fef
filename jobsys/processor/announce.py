"""The processor announces itself: who it is, what it serves and refuses (a side task).

Every BEAT_S seconds it writes its entry in the namespace's presence bucket
(jobsys.nats.presence): host, pid, version, slots, the jobs it serves, the
pipelines it may run, and each job it will not serve with the reason (not
allowed by JOBSYS_PIPELINE_MODULES, cannot be imported here...). That is
how `jobsys status` can say why a job does not move without processors ever
touching Postgres. On a graceful stop it writes a last entry, `stopped`.

A beat that fails (NATS down, the bucket not made yet and not ours to make)
is logged once and tried again at the next beat: announcing never stops the
processor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from jobsys.nats.presence import BEAT_S, Member, Refusal, announce, open_bucket
from jobsys.pipelines.resolve import servable, why_not_here
from jobsys.settings import Settings
from jobsys.version import version

log = logging.getLogger(__name__)

# How long the last, `stopped`, entry may take at shutdown.
STOP_WRITE_S = 2.0


class Announcer:
    """Beats for one processor; `served()` and `refused()` read its feeds when called."""

    def __init__(
        self,
        settings: Settings,
        js: JetStreamContext,
        slots: int,
        pool: str,
        served: Callable[[], list[int]],
        refused: Callable[[], Mapping[int, str]],
    ) -> None:
        self.settings = settings
        self.js = js
        self.served = served
        self.refused = refused
        pipelines, modules = servable()
        self.member = Member(
            kind="processor",
            id=uuid.uuid4().hex[:12],
            host=socket.gethostname(),
            pid=os.getpid(),
            version=version(),
            started_at=datetime.now(UTC),
            slots=slots,
            pool=pool,
            pipelines=pipelines,
            modules=modules,
        )
        # Why each refused pipeline is refused, judged once per name.
        self._reasons: dict[str, str] = {}

    def _reason(self, pipeline: str) -> str:
        if pipeline not in self._reasons:
            self._reasons[pipeline] = why_not_here(pipeline) or "not served yet"
        return self._reasons[pipeline]

    def describe(self) -> Member:
        """This processor now."""
        refusals = [
            Refusal(job_id=job_id, pipeline=pipeline, reason=self._reason(pipeline))
            for job_id, pipeline in sorted(self.refused().items())
        ]
        return self.member.model_copy(update={"jobs": sorted(self.served()), "refused": refusals})

    async def run(self) -> None:
        """Beat until cancelled; then write the `stopped` entry."""
        bucket: KeyValue | None = None
        failing = False
        try:
            while True:
                try:
                    if bucket is None:
                        bucket = await open_bucket(self.js, self.settings, create=True)
                    if bucket is not None:
                        await announce(bucket, self.describe())
                    failing = False
                except Exception as exc:
                    bucket = None
                    if not failing:
                        log.warning("cannot announce this processor (tried again at each beat)",
                                    extra={"error": repr(exc)})  # fmt: skip
                    failing = True
                await asyncio.sleep(BEAT_S)
        except asyncio.CancelledError:
            if bucket is not None:
                stopped = self.describe().model_copy(update={"state": "stopped", "jobs": []})
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(announce(bucket, stopped), STOP_WRITE_S)
            raise

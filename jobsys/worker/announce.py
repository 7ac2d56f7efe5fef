"""The worker announces itself in the presence bucket (jobsys.nats.presence).

A thread writes the worker's entry every BEAT_S seconds through the
process's NATS bridge, and a last `stopped` entry when the worker stops. A
worker makes the bucket when it is missing (workers may create streams).
`jobsys doctor` fails, and `jobsys status` says `no worker is running`,
when no worker has been seen for GONE_AFTER_S.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import UTC, datetime

from nats.js import JetStreamContext

from jobsys.nats.bridge import bridge
from jobsys.nats.presence import BEAT_S, Member, announce, open_bucket
from jobsys.settings import Settings, get_settings
from jobsys.version import version

log = logging.getLogger(__name__)

# How long one beat may take before it counts as failed.
BEAT_TIMEOUT_S = 10.0


class WorkerBeat:
    """A daemon thread announcing this worker until `stop()`."""

    def __init__(self, threads: int, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.member = Member(
            kind="worker",
            id=uuid.uuid4().hex[:12],
            host=socket.gethostname(),
            pid=os.getpid(),
            version=version(),
            started_at=datetime.now(UTC),
            slots=threads,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobsys-announce", daemon=True)

    def start(self) -> WorkerBeat:
        """Start beating."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and write the `stopped` entry (best effort)."""
        self._stop.set()
        self._thread.join(BEAT_TIMEOUT_S)
        self._beat(self.member.model_copy(update={"state": "stopped"}))

    def _beat(self, member: Member) -> bool:
        settings = self.settings

        async def put(nc: object, js: JetStreamContext) -> None:
            bucket = await open_bucket(js, settings, create=True)
            assert bucket is not None
            await announce(bucket, member)

        try:
            bridge().run(put, timeout=BEAT_TIMEOUT_S)
        except Exception as exc:
            log.debug("worker beat failed", extra={"error": repr(exc)})
            return False
        return True

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            ok = self._beat(self.member)
            if not ok and not failing:
                log.warning("cannot announce this worker (tried again at each beat)")
            failing = not ok
            self._stop.wait(BEAT_S)

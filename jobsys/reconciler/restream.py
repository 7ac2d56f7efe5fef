"""Handlers of `stream_missing`, `stream_replaced`, `consumer_missing` and
`consumer_stale`: the job's
stream made whole by the one fill bootstrap uses (`jobsys.bootstrap.fill`).

Under the job's bootstrap lock, so a fill here and a bootstrap never run at
once; when a bootstrap holds it, the next pass looks again (that bootstrap
makes the stream whole itself). The fill re-creates what is missing,
republishes every pending task the stream present does not hold, finishes a
stalled bootstrap's publishing on the way, and stops (deleting what it made)
if the job leaves `started` meanwhile.
"""

from __future__ import annotations

from typing import Any

from jobsys.bootstrap.fill import FillEnd, fill_job_stream
from jobsys.nats.admin import delete_job_consumer
from jobsys.nats.bridge import bridge
from jobsys.pg.locks import Lock, job_lock
from jobsys.reconciler.findings import Handled
from jobsys.reconciler.kinds import Action
from jobsys.reconciler.state import Seen


def _fill(seen: Seen, action: Action, drop_consumer: bool = False) -> Handled:
    with job_lock(Lock.BOOTSTRAP, seen.job_id) as held:
        if not held:
            return Handled(
                Action.NONE, {"reason": "a bootstrap is running; the next pass looks again"}
            )
        if drop_consumer:
            bridge().run(lambda nc, js: delete_job_consumer(js, seen.names))
        fill = fill_job_stream(seen.job_id, seen.settings)
    if fill.end == FillEnd.STOPPED:
        return Handled(
            Action.NONE,
            {"reason": "job left started while its stream was re-created"},
            finalized=fill.finalized,
        )
    detail: dict[str, Any] = {"republished": fill.republished, "published": fill.published}
    if fill.too_large:
        detail["too_large"] = fill.too_large
    return Handled(action, detail)


def stream_missing(seen: Seen) -> Handled:
    """A started job without its stream: re-create it, republish every pending task."""
    return _fill(seen, Action.RECREATED)


def stream_replaced(seen: Seen) -> Handled:
    """A stream its tasks were not published to (re-created empty by someone):
    republish every pending task into it."""
    return _fill(seen, Action.RECREATED)


def consumer_missing(seen: Seen) -> Handled:
    """A stream without its consumer: re-create the consumer (the messages are still there)."""
    return _fill(seen, Action.RECREATED_CONSUMER)


def consumer_stale(seen: Seen) -> Handled:
    """An idle job whose consumer awaits acks for messages the stream no longer holds
    (`NatsView.consumer_stale`): delete the consumer and make a new one, which
    delivers every message still stored. A processor still running one of them
    acks into the new consumer for nothing; the message is delivered again and
    its second result counts nothing (jobsys.recording)."""
    return _fill(seen, Action.RECREATED_CONSUMER, drop_consumer=True)

"""When a processor stops fetching: its hold of unrecorded results against the
recorder's pace (jobsys.processor.outbox). No server.

A flat cap of JOBSYS_MAX_HELD_RESULTS throttled one fast job (a healthy
pipeline holds its throughput times a batch's round trip); it now binds only
while the recorder is behind, up to KEEPING_UP_FACTOR times the cap.
"""

from __future__ import annotations

from jobsys.processor.keepalive import KeepAlive
from jobsys.processor.outbox import KEEPING_UP_FACTOR, RECORDER_BEHIND_S, Outbox
from jobsys.settings import Settings

CAP = 10
BATCH = 5
JOB = 7


def _outbox() -> Outbox:
    settings = Settings.model_construct(max_held_results=CAP, result_flush_ms=100)
    return Outbox(settings, KeepAlive(None), batch_size=BATCH, notify_subject=str)  # type: ignore[arg-type]


def _add(outbox: Outbox, n: int) -> None:
    for i in range(n):
        outbox.add_item(JOB, {"task": i, "status": "done"}, f"reply.{i}")


def test_a_recorder_that_keeps_up_lets_the_hold_pass_the_cap() -> None:
    outbox = _outbox()
    _add(outbox, CAP)
    assert outbox.results == CAP and len(outbox.held) == CAP // BATCH
    assert not outbox.full  # every batch sealed just now: the recorder is not behind


def test_a_batch_unconfirmed_too_long_stops_fetching_at_the_cap() -> None:
    outbox = _outbox()
    _add(outbox, CAP)
    oldest = next(iter(outbox.held.values()))
    oldest.sealed_at -= RECORDER_BEHIND_S + 1
    assert outbox.full
    outbox.confirm(next(iter(outbox.held)))  # recorded: the hold is under the cap again
    assert outbox.results == CAP - BATCH and not outbox.full


def test_below_the_cap_a_slow_recorder_does_not_stop_fetching() -> None:
    outbox = _outbox()
    _add(outbox, CAP - 1)
    next(iter(outbox.held.values())).sealed_at -= RECORDER_BEHIND_S + 1
    assert not outbox.full


def test_even_a_recorder_that_keeps_up_stops_fetching_at_its_factor() -> None:
    outbox = _outbox()
    _add(outbox, int(CAP * KEEPING_UP_FACTOR))
    assert outbox.full

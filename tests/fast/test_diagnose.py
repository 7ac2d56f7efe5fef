"""`diagnose` as a table: what the reconciler finds for what it sees. No database, no NATS.

Each row is one situation (the database's side of a job, NATS's side, the
thresholds) and the findings it must give, in the order they are acted on.
Needs no service: ``pytest --noconftest tests/test_diagnose.py`` runs it
without the test database the suite's conftest creates.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobsys.lifecycle.states import Status
from jobsys.reconciler import JobState, Kind, NatsView, Thresholds, diagnose
from jobsys.reconciler.handlers import HANDLERS
from jobsys.reconciler.state import Counts

LIMITS = Thresholds(lost_after_s=120, queued_stale_s=60, cancel_grace_s=60)
CREATED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

# A started job of 10 tasks, all published, 4 done, 6 pending, active a second ago.
JOB = JobState(
    id=1, status=Status.STARTED, total=10, published=10,
    counters=Counts(done=4), ledger=Counts(done=4), pending=6, idle_s=1.0,
    stream_created=CREATED,
)  # fmt: skip
# Its stream and consumer: 6 messages, all offered to processors, none held.
NATS = NatsView(
    stream=True, consumer=True, messages=6, num_pending=6, num_ack_pending=0,
    num_redelivered=0, num_waiting=1, advisories=None, created=CREATED,
)  # fmt: skip
NO_STREAM = NatsView()
IDLE = {"idle_s": 600.0}
NOTHING_LEFT = {"messages": 0, "num_pending": 0, "num_ack_pending": 0}

K = Kind
CASES: list[tuple[str, dict[str, Any], NatsView | None, list[Kind]]] = [
    ("a healthy started job", {}, NATS, []),
    ("a started job NATS was not looked at for", {}, None, []),
    ("counters differ from the ledger", {"counters": Counts(done=3)}, NATS, [K.COUNTERS_DRIFT]),
    ("canceling within the grace period", {"status": Status.CANCELING, "canceling_s": 59.0},
     None, []),
    ("canceling past the grace period", {"status": Status.CANCELING, "canceling_s": 60.0},
     None, [K.CANCEL_OVERDUE]),
    ("canceling, since when unknown", {"status": Status.CANCELING, "canceling_s": None},
     None, []),
    ("queued, not yet stale", {"status": Status.QUEUED, "idle_s": 59.0}, None, []),
    ("queued and stale: bootstrap message lost", {"status": Status.QUEUED, "idle_s": 60.0},
     None, [K.QUEUED_STALE]),
    ("queued with drifted counters and stale",
     {"status": Status.QUEUED, "idle_s": 60.0, "counters": Counts(failed=1)},
     None, [K.COUNTERS_DRIFT, K.QUEUED_STALE]),
    ("started without its stream", {}, NO_STREAM, [K.STREAM_MISSING]),
    ("started without its stream, idle: never marked lost", IDLE, NO_STREAM,
     [K.STREAM_MISSING]),
    ("stream missing and bootstrap stalled: the repair finishes publishing",
     {"published": 3, **IDLE}, NO_STREAM, [K.STREAM_MISSING]),
    ("a stream the tasks were not published to",
     {}, replace(NATS, created=CREATED + timedelta(seconds=5)), [K.STREAM_REPLACED]),
    ("a replaced stream, empty and idle: republished, never marked lost",
     IDLE, replace(NATS, created=CREATED + timedelta(seconds=5), **NOTHING_LEFT),
     [K.STREAM_REPLACED]),
    ("incarnation not recorded (bootstrapped before 005): the stream is taken as it",
     {"stream_created": None}, replace(NATS, created=CREATED + timedelta(seconds=5)), []),
    ("stream creation time unknown: not called replaced",
     {}, replace(NATS, created=None), []),
    ("a stream without its consumer", {}, replace(NATS, consumer=False, num_pending=None,
     num_ack_pending=None), [K.CONSUMER_MISSING]),
    ("bootstrap stopped half-way, idle past queued_stale_s",
     {"published": 4, "idle_s": 60.0}, NATS, [K.BOOTSTRAP_STALLED]),
    ("bootstrap still publishing (not idle)", {"published": 4, "idle_s": 59.0}, NATS, []),
    ("bootstrap stalled with nothing in NATS: stalled, not lost",
     {"published": 4, **IDLE}, replace(NATS, **NOTHING_LEFT), [K.BOOTSTRAP_STALLED]),
    ("MAX_DELIVERIES advisories in the stream", {}, replace(NATS, advisories=2),
     [K.TASKS_EXHAUSTED]),
    ("advisories counted: none", {}, replace(NATS, advisories=0), []),
    ("advisories not counted, stream holds more than NATS may deliver",
     {}, replace(NATS, messages=8), [K.TASKS_EXHAUSTED]),
    ("idle, nothing left to deliver, pending in the ledger", IDLE,
     replace(NATS, **NOTHING_LEFT), [K.IDLE_LOST]),
    ("idle but not yet lost_after_s", {"idle_s": 119.0}, replace(NATS, **NOTHING_LEFT), []),
    ("idle with messages no processor takes", IDLE, replace(NATS, num_waiting=0),
     [K.WAITING]),
    ("idle with messages a processor holds", IDLE,
     replace(NATS, num_pending=0, num_ack_pending=6), [K.WAITING]),
    ("idle, the consumer awaits acks for more messages than the stream holds (its state "
     "outlived a NATS restart)", IDLE,
     replace(NATS, messages=5, num_pending=0, num_ack_pending=640), [K.CONSUMER_STALE]),
    ("the same, not yet idle: a moment of acks in flight is no finding", {"idle_s": 119.0},
     replace(NATS, messages=5, num_pending=0, num_ack_pending=640), []),
    ("idle, as many awaiting acks as stored: processors hold them", IDLE,
     replace(NATS, messages=6, num_pending=0, num_ack_pending=6), [K.WAITING]),
    ("idle with nothing pending in the ledger", {**IDLE, "pending": 0, "ledger": Counts(done=10),
     "counters": Counts(done=10)}, replace(NATS, **NOTHING_LEFT), []),
    ("drift and idle lost: repaired first", {**IDLE, "counters": Counts(done=5)},
     replace(NATS, **NOTHING_LEFT), [K.COUNTERS_DRIFT, K.IDLE_LOST]),
    # The advisories say how often NATS delivered each exhausted task; the
    # idle rule would mark them lost without it (the chaos suite saw 5 tasks
    # `lost` after "0 deliveries" when 18,000 advisories took longer to read
    # than the pass gave them). It waits until every advisory is counted.
    ("exhausted tasks, idle: their advisories are counted, the idle rule waits", IDLE,
     replace(NATS, advisories=1, messages=2, num_pending=0, num_ack_pending=0),
     [K.TASKS_EXHAUSTED]),
    ("exhausted tasks whose advisories were all counted, idle: the idle rule", IDLE,
     replace(NATS, advisories=0, messages=2, num_pending=0, num_ack_pending=0),
     [K.IDLE_LOST]),
    ("idle, advisories not counted (the bulk look): the handler counts them first", IDLE,
     replace(NATS, advisories=None, messages=2, num_pending=0, num_ack_pending=0),
     [K.TASKS_EXHAUSTED, K.IDLE_LOST]),
]  # fmt: skip


@pytest.mark.parametrize(("situation", "job", "nats", "expected"), CASES, ids=[c[0] for c in CASES])
def test_diagnose(
    situation: str, job: dict[str, Any], nats: NatsView | None, expected: list[Kind]
) -> None:
    assert diagnose(replace(JOB, **job), nats, LIMITS) == expected, situation


def test_every_finding_diagnose_can_give_has_exactly_one_handler() -> None:
    per_job = set(Kind) - {Kind.STRAY_STREAM, Kind.ERROR}
    assert set(HANDLERS) == per_job
    found = {k for _, job, nats, kinds in CASES for k in kinds}
    assert found == per_job, "a kind no row of the table shows"


def test_a_job_state_reads_a_reconcile_row() -> None:
    row = {
        "id": 7, "status": "canceling", "total_count": 5, "published_count": 5,
        "done_count": 1, "failed_count": 2, "lost_count": 0, "cancelled_count": 0,
        "pending": 2, "done": 1, "failed": 1, "lost": 0, "cancelled": 0, "total": 4,
        "idle_s": 3, "canceling_s": 61, "stream_created": CREATED,
    }  # fmt: skip
    job = JobState.of(row)
    assert (job.status, job.counters, job.ledger) == (
        Status.CANCELING, Counts(1, 2, 0, 0), Counts(1, 1, 0, 0),
    )  # fmt: skip
    assert diagnose(job, None, LIMITS) == [Kind.COUNTERS_DRIFT, Kind.CANCEL_OVERDUE]
    assert job.saw(None)["ledger"] == {
        "pending": 2, "done": 1, "failed": 1, "lost": 0, "cancelled": 0, "total": 4,
    }  # fmt: skip

"""What a pass sees of one job: the database's side (`JobState`), NATS's side
(`NatsView`), and the thresholds it judges them by (`Thresholds`).

Plain values, built from a `job_reconcile_state` row and NATS stream and
consumer info; `diagnose` reads nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nats.js.api import ConsumerInfo, StreamInfo

from jobsys.lifecycle.states import Status
from jobsys.nats.admin import parse_server_time
from jobsys.nats.presence import Member, members
from jobsys.nats.presence import now as presence_now
from jobsys.nats.subjects import JobNames
from jobsys.settings import Settings

log = logging.getLogger(__name__)

COUNTERS = ("done", "failed", "lost", "cancelled")


@dataclass(frozen=True)
class Counts:
    """Done, failed, lost and cancelled tasks, as counted by one side."""

    done: int = 0
    failed: int = 0
    lost: int = 0
    cancelled: int = 0

    def as_dict(self) -> dict[str, int]:
        """``{"done": .., "failed": .., "lost": .., "cancelled": ..}`` (by hand:
        `dataclasses.asdict` deep-copies, and a pass builds one per waiting job)."""
        return {"done": self.done, "failed": self.failed, "lost": self.lost,
                "cancelled": self.cancelled}  # fmt: skip


@dataclass(frozen=True)
class JobState:
    """The database's side of one active job (a `job_reconcile_state` row)."""

    id: int
    status: Status
    total: int
    published: int
    counters: Counts  # the job row's counter columns
    ledger: Counts  # job_tasks's own counts
    pending: int  # job_tasks still pending
    idle_s: float  # since the job last made progress
    canceling_s: float | None = None  # since the job moved to canceling
    stream_created: datetime | None = None  # the stream incarnation its tasks went to

    @classmethod
    def of(cls, row: dict[str, Any]) -> JobState:
        """From a `job_reconcile_state` row."""
        return cls(
            id=row["id"],
            status=Status(row["status"]),
            total=row["total_count"],
            published=row["published_count"],
            counters=Counts(*(row[f"{k}_count"] for k in COUNTERS)),
            ledger=Counts(*(row[k] for k in COUNTERS)),
            pending=row["pending"],
            idle_s=float(row["idle_s"]),
            canceling_s=float(row["canceling_s"]) if row["canceling_s"] is not None else None,
            stream_created=row.get("stream_created"),
        )

    def saw(self, nats: NatsView | None) -> dict[str, Any]:
        """What a finding records as seen: DB counters, ledger counts, NATS state."""
        ledger = self.ledger.as_dict()
        return {
            "status": str(self.status),
            "counters": {**self.counters.as_dict(), "total": self.total,
                         "published": self.published},
            "ledger": {"pending": self.pending, **ledger,
                       "total": self.pending + sum(ledger.values())},
            "idle_s": round(self.idle_s, 3),
            "nats": nats.as_dict() if nats is not None else None,
        }  # fmt: skip


@dataclass(frozen=True)
class NatsView:
    """NATS's view of one job: its stream and consumer state (None = unknown)."""

    stream: bool = False
    consumer: bool = False
    messages: int | None = None
    num_pending: int | None = None
    num_ack_pending: int | None = None
    num_redelivered: int | None = None
    num_waiting: int | None = None
    # MAX_DELIVERIES advisories captured in the job's stream; None when not
    # counted (the bulk look counts them only for jobs that may have some).
    advisories: int | None = None
    # The stream's creation time: which incarnation of it this is.
    created: datetime | None = None

    @classmethod
    def of(
        cls, stream: StreamInfo | None, consumer: ConsumerInfo | None, advisories: int | None
    ) -> NatsView:
        """Build from stream and consumer info (either may be missing)."""
        fields: dict[str, Any] = {"stream": stream is not None, "consumer": consumer is not None,
                                  "advisories": advisories}  # fmt: skip
        if stream is not None:
            fields["messages"] = stream.state.messages
            fields["created"] = parse_server_time(stream.created)
        if consumer is not None:
            fields["num_pending"] = consumer.num_pending or 0
            fields["num_ack_pending"] = consumer.num_ack_pending or 0
            fields["num_redelivered"] = consumer.num_redelivered or 0
            fields["num_waiting"] = consumer.num_waiting or 0
        return cls(**fields)

    @property
    def maybe_exhausted(self) -> bool:
        """The stream holds more than NATS may still deliver: exhausted tasks or advisories."""
        if self.advisories is not None:
            return self.advisories > 0
        if self.messages is None or self.num_pending is None or self.num_ack_pending is None:
            return False
        return self.messages > self.num_pending + self.num_ack_pending

    @property
    def consumer_stale(self) -> bool:
        """The consumer counts more messages awaiting acks than the stream holds.

        In a work-queue stream every message awaiting an ack is still stored,
        so this is a consumer whose state outlived the messages: nats-server 2.9
        restarted with a consumer state older than its stream's, and its
        redeliveries then stall on the gone messages while the live ones wait
        for ever (seen in the chaos suite: 640 awaiting acks, 5 stored, nothing
        delivered for 4 minutes; nats-server#6387 fixed it in 2.10.25)."""
        return (
            self.messages is not None
            and self.num_ack_pending is not None
            and self.num_ack_pending > self.messages
        )

    @property
    def nothing_to_deliver(self) -> bool:
        """NATS neither offers nor holds any of the job's messages."""
        return self.num_pending == 0 and self.num_ack_pending == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (what findings record and `jobsys inspect` shows); by hand,
        as `Counts.as_dict`."""
        return {
            "stream": self.stream,
            "consumer": self.consumer,
            "messages": self.messages,
            "num_pending": self.num_pending,
            "num_ack_pending": self.num_ack_pending,
            "num_redelivered": self.num_redelivered,
            "num_waiting": self.num_waiting,
            "advisories": self.advisories,
            "created": self.created.isoformat() if self.created is not None else None,
        }


@dataclass(frozen=True)
class Thresholds:
    """How long is too long, for each idle rule (from Settings)."""

    lost_after_s: float
    queued_stale_s: float
    cancel_grace_s: float

    @classmethod
    def of(cls, settings: Settings) -> Thresholds:
        """The thresholds a deployment configured."""
        return cls(settings.lost_after_s, settings.queued_stale_s, settings.cancel_grace_s)


@dataclass(frozen=True)
class Seen:
    """What a handler gets: one job as seen (under its lock, or by the pass for a
    finding that acts on nothing), the settings, and the pass's look at the team."""

    job: JobState
    nats: NatsView | None
    settings: Settings
    team: TeamLook = field(default_factory=lambda: TeamLook())

    @property
    def job_id(self) -> int:
        """The job's id."""
        return self.job.id

    @property
    def names(self) -> JobNames:
        """The job's NATS names."""
        return JobNames.of(self.settings.namespace, self.job.id)


class TeamLook:
    """The announced workers and processors, read once however many jobs ask (a
    pass reads the presence bucket once, not once per waiting job)."""

    def __init__(self) -> None:
        self._read = False
        self._members: list[Member] | None = None
        self.at = presence_now()

    def members(self) -> list[Member] | None:
        """The announced members; None when they cannot be read."""
        if not self._read:
            self._read = True
            try:
                self._members = members()
            except Exception as exc:
                log.info("presence not readable", extra={"error": repr(exc)})
            self.at = presence_now()
        return self._members

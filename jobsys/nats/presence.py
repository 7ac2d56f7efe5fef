"""Who is running: workers and processors announce themselves in a JetStream KV bucket.

Every worker and processor puts one entry, ``<kind>.<id>``, into the bucket
``<namespace>_members`` every BEAT_S seconds (a processor needs no Postgres
for it), and a last one saying ``stopped`` when it stops gracefully. The
entry says what a person needs to know to tell why a job does not move: host,
pid, version, slots, the jobs it serves, the pipelines it can serve and
those it refused, with the reason. When it was last seen is the server's
time stamp of its latest entry. A member not seen for GONE_AFTER_S is gone
(killed, or cut off); the bucket forgets entries FORGET_AFTER_S old.

The bucket is made by the first member allowed to (workers always are);
readers (the CLI) only bind to it. An entry is validated when read: a member
that wrote something else is skipped, never trusted.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Literal

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobsys.nats.bridge import bridge
from jobsys.settings import Settings, get_settings

log = logging.getLogger(__name__)

# How often each member writes its entry.
BEAT_S = 5.0
# A running member not seen for this long is gone (four beats missed).
GONE_AFTER_S = 20.0
# Entries older than this are deleted by NATS (the bucket's max age): gone
# members are listed for an hour, then forgotten.
FORGET_AFTER_S = 3_600.0
# How long a reader waits for the bucket's entries.
READ_TIMEOUT_S = 3.0

Kind = Literal["worker", "processor"]


def bucket_name(namespace: str) -> str:
    """The namespace's bucket (its stream is ``KV_<bucket>``, never taken for a job's)."""
    return f"{namespace}_members"


class Refusal(BaseModel):
    """A job a processor will not serve, and why (one line)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    job_id: int
    pipeline: str = Field(max_length=500)
    reason: str = Field(max_length=500)


class Member(BaseModel):
    """One worker or processor as it announces itself."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: Kind
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    host: str = Field(max_length=255)
    pid: int
    version: str = Field(max_length=100)
    started_at: datetime
    state: Literal["running", "stopped"] = "running"
    # Worker threads, or processor execution slots.
    slots: int = 0
    pool: str | None = None
    # Jobs a processor serves now.
    jobs: list[int] = Field(default_factory=list, max_length=100_000)
    # What a processor may run: pipeline names (built in, declared by installed
    # packages) and the module prefixes of JOBSYS_PIPELINE_MODULES.
    pipelines: list[str] = Field(default_factory=list, max_length=10_000)
    modules: list[str] = Field(default_factory=list, max_length=1_000)
    refused: list[Refusal] = Field(default_factory=list, max_length=10_000)
    # A remote processor (`jobsys process --server`): the gateway writes its
    # entry for it, with the name of the token it calls with.
    remote: bool = False
    token: str | None = Field(default=None, max_length=64)
    # When NATS stored the latest entry (set by the reader, not the member).
    seen_at: datetime | None = None

    @property
    def key(self) -> str:
        """The member's key in the bucket."""
        return f"{self.kind}.{self.id}"

    def seen_ago(self, now: datetime) -> float | None:
        """Seconds since the member was last seen (None: unknown)."""
        return (now - self.seen_at).total_seconds() if self.seen_at is not None else None

    def alive(self, now: datetime) -> bool:
        """Running and seen within GONE_AFTER_S."""
        ago = self.seen_ago(now)
        return self.state == "running" and ago is not None and ago < GONE_AFTER_S

    def condition(self, now: datetime) -> str:
        """``alive``, ``stopped`` or ``gone`` (not seen for GONE_AFTER_S)."""
        if self.state == "stopped":
            return "stopped"
        return "alive" if self.alive(now) else "gone"


async def open_bucket(
    js: JetStreamContext, settings: Settings, create: bool = False
) -> KeyValue | None:
    """The namespace's bucket; made if missing and `create` (and allowed); None if it
    does not exist (nobody announced yet, or we may not make it)."""
    name = bucket_name(settings.namespace)
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        if not create:
            return None
    config = KeyValueConfig(
        bucket=name,
        description="jobsys workers and processors, one entry each (jobsys.nats.presence)",
        history=1,
        ttl=FORGET_AFTER_S,
        storage=StorageType.FILE,
        replicas=settings.stream_replicas,
    )
    return await js.create_key_value(config)


async def announce(bucket: KeyValue, member: Member) -> None:
    """Write the member's entry (a beat)."""
    await bucket.put(member.key, member.model_dump_json(exclude={"seen_at"}).encode())


async def read_members(js: JetStreamContext, settings: Settings) -> list[Member]:
    """Every member the bucket holds (alive, stopped or gone), by kind and host.

    Read until every key the bucket holds now has been seen, not until the KV
    watcher's "that was all" marker: the watcher sends it when a pending count
    reaches zero, which messages still on their way to it make happen early (the
    read came back empty or short while members beat), and entries re-written
    during the read came twice. Each key is kept once, its latest entry.
    """
    bucket = await open_bucket(js, settings)
    if bucket is None:
        return []
    name = bucket_name(settings.namespace)
    prefix = f"$KV.{name}."
    # Listed after the watcher is made: each key's latest entry then is
    # delivered, or replaced by a newer beat that is delivered after it.
    watcher = await bucket.watchall()
    latest: dict[str, KeyValue.Entry] = {}
    try:
        info = await js.stream_info(f"KV_{name}", subjects_filter=f"{prefix}>")
        keys = {s.removeprefix(prefix) for s in (info.state.subjects or {})}
        while keys - latest.keys():
            try:
                entry = await watcher.updates(timeout=READ_TIMEOUT_S)
            except NatsTimeoutError:
                # The keys left expired since they were listed (an entry's own
                # pending count is no sign of the end either: it was 0 with
                # entries still to come).
                break
            if entry is None:
                continue  # the watcher's early "that was all": not trusted
            kept = latest.get(entry.key)
            if kept is None or (kept.revision or 0) < (entry.revision or 0):
                latest[entry.key] = entry
    finally:
        await watcher.stop()
    found = [m for m in map(_member, latest.values()) if m is not None]
    return sorted(found, key=lambda m: (m.kind, m.host, m.pid))


def _member(entry: KeyValue.Entry) -> Member | None:
    """The entry's member; None for a deleted, purged or expired entry or one that
    does not validate."""
    if entry.operation is not None or not entry.value:
        return None
    try:
        member = Member.model_validate_json(entry.value)
    except ValidationError:
        log.debug("skipped a malformed presence entry", extra={"key": entry.key})
        return None
    created = entry.created if isinstance(entry.created, datetime) else None
    return member.model_copy(update={"seen_at": created})


def members(timeout: float = READ_TIMEOUT_S) -> list[Member]:
    """`read_members` from sync code (this process's NATS bridge); raises when NATS does
    not answer within `timeout`."""
    settings = get_settings()

    async def read(nc: object, js: JetStreamContext) -> list[Member]:
        return await asyncio.wait_for(read_members(js, settings), timeout)

    return bridge().run(read, timeout=timeout + 1.0)


def now() -> datetime:
    """The time `Member.alive` is judged against."""
    return datetime.now(UTC)

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
import contextlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Literal

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    StorageType,
)
from nats.js.errors import BucketNotFoundError, NotFoundError
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
# Entries asked for at once by a reader, and how long NATS keeps a reader's
# consumer when the reader died before deleting it.
READ_BATCH = 500
READER_IDLE_S = 30.0
# Headers of an entry that is a deletion, a purge or (NATS 2.11+) an expiry.
KV_OPERATION = "KV-Operation"
MARKER_REASON = "Nats-Marker-Reason"

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

    Read with a pull consumer of the bucket's latest entries, not a KV watcher:
    a watcher decides it has seen everything from a pending count that messages
    still on their way make zero (the read came back empty, short, or with a
    member twice, while members beat). A pull consumer delivers nothing until
    asked, and reads on until it has seen every key the bucket holds.
    """
    name = bucket_name(settings.namespace)
    stream, prefix = f"KV_{name}", f"$KV.{name}."
    reader = uuid.uuid4().hex
    config = ConsumerConfig(
        name=reader,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=AckPolicy.NONE,
        filter_subject=f"{prefix}>",
        inactive_threshold=READER_IDLE_S,
        mem_storage=True,
    )
    try:
        made = await js.add_consumer(stream, config)
    except NotFoundError:
        return []  # nobody announced yet
    latest: dict[str, Msg] = {}
    try:
        sub = await js.pull_subscribe_bind(consumer=reader, stream=stream)
        # The keys the bucket holds now: each one's latest entry is delivered, or
        # replaced by a newer beat that is delivered after it. Done when all are
        # seen, or at a message after which nothing is pending (what was deleted
        # or expired since never comes). Not by counting the consumer's pending:
        # a replaced entry is not delivered, and any key's newer beat is.
        keys = await _keys(js, stream, prefix) if made.num_pending else set()
        while keys - latest.keys():
            try:
                batch = await sub.fetch(READ_BATCH, timeout=READ_TIMEOUT_S)
            except NatsTimeoutError:
                break  # the entries left expired since the keys were listed
            for msg in batch:
                key = msg.subject.removeprefix(prefix)
                kept = latest.get(key)
                if kept is None or kept.metadata.sequence.stream < msg.metadata.sequence.stream:
                    latest[key] = msg
            if batch and batch[-1].metadata.num_pending == 0:
                break
        await sub.unsubscribe()
    finally:
        with contextlib.suppress(NatsError):
            await js.delete_consumer(stream, reader)
    found = [m for m in map(_member, latest.values()) if m is not None]
    return sorted(found, key=lambda m: (m.kind, m.host, m.pid))


async def _keys(js: JetStreamContext, stream: str, prefix: str) -> set[str]:
    """The keys the bucket's stream holds a message for."""
    info = await js.stream_info(stream, subjects_filter=f"{prefix}>")
    return {subject.removeprefix(prefix) for subject in (info.state.subjects or {})}


def _member(msg: Msg) -> Member | None:
    """The entry's member; None for a deleted, purged or expired entry or one that
    does not validate."""
    headers = msg.headers or {}
    if KV_OPERATION in headers or MARKER_REASON in headers or not msg.data:
        return None
    try:
        member = Member.model_validate_json(msg.data)
    except ValidationError:
        log.debug("skipped a malformed presence entry", extra={"key": msg.subject})
        return None
    return member.model_copy(update={"seen_at": msg.metadata.timestamp})


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

"""Stream and consumer administration: one stream and one durable pull consumer per job,
their descriptions, and reading what a stream holds.

Names and the wire format are in jobsys.nats.subjects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError

from jobsys.nats.notices import StreamTerms, created_body, notice_job_stream
from jobsys.nats.subjects import MSG_ID_HEADER, JobNames, parse_msg_id
from jobsys.settings import Settings

log = logging.getLogger(__name__)

# Re-running bootstrap within this window never duplicates a task message.
DUPLICATE_WINDOW_S = 600.0
# JetStream's error code: a stream of that name exists with another configuration.
STREAM_NAME_IN_USE = 10058
# JetStream's error code: no memory for a memory stream (the server's
# max_memory_store, or the account's max_mem, is 0 or used up).
NO_MEMORY_FOR_STREAM = 10028
# After a refusal, "auto" makes small jobs' streams on file for this long
# before it asks for memory again (the server may have been given some).
MEMORY_REFUSED_FOR_S = 300.0


# Deliveries JetStream allows beyond the job's max_deliver. nats-server before
# 2.11 counts a redelivery that meets a pull request which just expired as a
# delivery, though nobody got it, and makes it again only after ack_wait
# (fixed upstream in 2.11: "Fixed delivery counts on failed deliveries").
# Processors pull with short expiries, so a task's last allowed delivery could
# be counted and never made: the task ended `lost` though every delivery it ran
# had failed. Processors give up at the job's own max_deliver (read from the
# stream's description: "gave up after N deliveries"); the consumer allows
# this many more, so a delivery lost that way costs a redelivery, not the task.
DELIVERY_SLACK = 2


def describe_stream(
    pipeline: str,
    task_timeout_s: float | None = None,
    max_deliver: int | None = None,
    retry_delay: tuple[float, float] | None = None,
    rate_per_s: float | None = None,
    priority: int | None = None,
    weight: int | None = None,
) -> str:
    """A job stream's description: what processors need to know to serve it
    (they never read Postgres): the pipeline, the job's task time limit, its
    max_deliver, its retry delay (base, max seconds) and its rate limit (tasks
    per second) if it has them, and its share of execution slots (priority,
    weight)."""
    described: dict[str, Any] = {"pipeline": pipeline}
    if task_timeout_s is not None:
        described["task_timeout_s"] = task_timeout_s
    if max_deliver is not None:
        described["max_deliver"] = max_deliver
    if retry_delay is not None:
        described["retry_delay"] = list(retry_delay)
    if rate_per_s is not None:
        described["rate_per_s"] = rate_per_s
    if priority is not None:
        described["priority"] = priority
    if weight is not None:
        described["weight"] = weight
    return json.dumps(described)


def _described(description: str | None) -> dict[str, Any]:
    try:
        value = json.loads(description or "")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def pipeline_of_stream(description: str | None) -> str | None:
    """The pipeline named in a job stream's description, or None."""
    pipeline = _described(description).get("pipeline")
    return pipeline if isinstance(pipeline, str) else None


def max_deliver_of_stream(description: str | None) -> int | None:
    """The job's max_deliver in a job stream's description, or None (a stream made
    before it was there: its consumer's max_deliver is the job's)."""
    value = _described(description).get("max_deliver")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def task_timeout_of_stream(description: str | None) -> float | None:
    """The task time limit in a job stream's description, or None (a stream made
    before jobs had one: the processor's JOBSYS_TASK_TIMEOUT_S applies)."""
    value = _described(description).get("task_timeout_s")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def retry_delay_of_stream(description: str | None) -> tuple[float, float] | None:
    """The job's retry delay (base, max seconds) in a job stream's description, or
    None (none given at submit: the pipeline's or the processor's settings apply)."""
    value = _described(description).get("retry_delay")
    if not isinstance(value, list) or len(value) != 2:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return None
    base, cap = float(value[0]), float(value[1])
    return (base, cap) if 0 <= base <= cap else None


def rate_of_stream(description: str | None) -> float | None:
    """The job's rate limit (tasks per second) in a job stream's description, or None."""
    value = _described(description).get("rate_per_s")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def job_retry_delay(job: Mapping[str, Any]) -> tuple[float, float] | None:
    """A job row's retry delay as (base, max) seconds, or None if it has none."""
    base = job.get("retry_delay_s")
    if base is None:
        return None
    cap = job.get("retry_delay_max_s")
    return (float(base), float(cap if cap is not None else base))


def share_of_stream(description: str | None) -> tuple[int, int]:
    """The job's (priority, weight) in a job stream's description; (0, 1) when
    absent or not integers in bounds (a stream made before jobs had them, or
    a description written by someone else: it only orders this processor's
    own slots, so a bad value is ignored, not refused)."""
    return share_of(_described(description))


def share_of(described: Mapping[str, Any]) -> tuple[int, int]:
    """(priority, weight) from a mapping that may hold them (a stream's
    description, a gateway's claim answer); defaults for what is missing or bad."""
    return (
        _int_between(described.get("priority"), -SHARE_BOUND, SHARE_BOUND, 0),
        _int_between(described.get("weight"), 1, SHARE_BOUND, 1),
    )


# Bounds of priority (±) and weight (1..) a processor accepts from a description
# (the same as Postgres's checks, sql/017_priority_weight.sql).
SHARE_BOUND = 1_000


def _int_between(value: Any, low: int, high: int, otherwise: int) -> int:
    """`value` if it is an integer in [low, high], else `otherwise`."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return otherwise


async def set_stream_share(
    nc: NATS, js: JetStreamContext, names: JobNames, priority: int, weight: int
) -> bool:
    """Write a job's priority and weight into its stream's description (`jobsys set`);
    processors hear of it by the stream's UPDATED notice (and their listing).
    False if the stream is not there (the job has none yet, or any more: bootstrap
    and the reconciler write the description from the job's row)."""
    try:
        info = await js.stream_info(names.stream)
    except NotFoundError:
        return False
    config = info.config
    described = _described(config.description)
    described["priority"] = priority
    described["weight"] = weight
    config.description = json.dumps(described)
    try:
        await js.update_stream(config)
    except NotFoundError:
        return False
    await notice_job_stream(nc, names, "UPDATED")
    return True


async def ensure_job_stream(
    nc: NATS, js: JetStreamContext, names: JobNames, job: Mapping[str, Any], settings: Settings
) -> StreamInfo:
    """`make_job_stream`, then say so (the CREATED notice: processors serve the job
    from then on). Returns the stream's info as NATS answered its creation."""
    info, body = await make_job_stream(nc, js, names, job, settings)
    await notice_job_stream(nc, names, "CREATED", body)
    return info


class _MemoryRefused:
    """When NATS last refused a memory stream to this process (monotonic s)."""

    at: float | None = None


def job_stream_storage(job: Mapping[str, Any], settings: Settings) -> StorageType:
    """Where the job's stream is kept (JOBSYS_STREAM_STORAGE). Under "auto", a
    job of at most JOBSYS_MEMORY_STREAM_MAX_TASKS tasks gets a memory stream:
    most of a small job's NATS cost is its stream's files made and removed,
    and a restart that loses the stream costs a republish of a few tasks from
    Postgres. A larger job, one whose size is not known, or any job while
    NATS refuses memory streams (see `_add_job_stream`) is kept on file."""
    if settings.stream_storage != "auto":
        return StorageType(settings.stream_storage)
    refused = _MemoryRefused.at
    if refused is not None and time.monotonic() - refused < MEMORY_REFUSED_FOR_S:
        return StorageType.FILE
    total = job.get("total_count")
    if total is not None and total <= settings.memory_stream_max_tasks:
        return StorageType.MEMORY
    return StorageType.FILE


async def _add_job_stream(
    js: JetStreamContext, stream: StreamConfig, settings: Settings
) -> StreamInfo:
    """Create the stream. Under "auto", a memory stream NATS has no memory for is
    made on file: a server or account without JetStream memory must not stop
    every small job from starting. Asked for "memory" outright, the refusal
    is raised."""
    try:
        return await js.add_stream(stream)
    except APIError as exc:
        if not (
            exc.err_code == NO_MEMORY_FOR_STREAM
            and stream.storage == StorageType.MEMORY
            and settings.stream_storage == "auto"
        ):
            raise
    if _MemoryRefused.at is None:
        log.warning("NATS refused a memory stream: small jobs' streams go on file",
                    extra={"stream": stream.name, "for_s": MEMORY_REFUSED_FOR_S})  # fmt: skip
    _MemoryRefused.at = time.monotonic()
    stream.storage = StorageType.FILE
    return await js.add_stream(stream)


async def make_job_stream(
    nc: NATS, js: JetStreamContext, names: JobNames, job: Mapping[str, Any], settings: Settings
) -> tuple[StreamInfo, bytes]:
    """Create the job's stream and durable pull consumer if missing (idempotent).
    Returns the stream's info as NATS answered its creation (or update), and the
    body of the CREATED notice that says so, not sent yet (`notice_job_stream`).

    Processors learn the pipeline from the stream's description, so they
    need NATS and Redis only, never Postgres.

    The stream also captures the consumer's MAX_DELIVERIES advisories, so
    the reconciler finds every exhausted task even if none ran when it was
    exhausted. Per job, not one wildcard stream per namespace: two streams'
    subjects may not overlap, and namespaces share a server.

    `job` is the job's row (at least `pipeline` and `max_deliver`; its
    `task_timeout_s` goes in the description, its `max_in_flight` becomes
    the consumer's max_ack_pending: JetStream then never has more of the
    job's tasks delivered and unacked, across all processors).
    """
    max_in_flight = job.get("max_in_flight") or settings.max_ack_pending
    stream = StreamConfig(
        name=names.stream,
        description=describe_stream(
            job["pipeline"],
            job.get("task_timeout_s"),
            job["max_deliver"],
            job_retry_delay(job),
            job.get("rate_per_s"),
            job.get("priority"),
            job.get("weight"),
        ),
        subjects=[names.subject, names.max_deliveries],
        # Work-queue retention: an acked task message is removed, so the
        # stream's message count is exactly what is still unacked.
        retention=RetentionPolicy.WORK_QUEUE,
        storage=job_stream_storage(job, settings),
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
        # On a JetStream cluster, R3 survives the loss of one node.
        num_replicas=settings.stream_replicas,
    )
    try:
        info = await _add_job_stream(js, stream, settings)
    except BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
        # The stream exists with another configuration (made under other
        # settings, e.g. JOBSYS_STREAM_REPLICAS): bring it to this one rather
        # than failing every bootstrap and repair of the job for ever.
        log.info("job stream updated to the current configuration",
                 extra={"stream": names.stream})  # fmt: skip
        # NATS cannot move a stream to another storage: one made under
        # another JOBSYS_STREAM_STORAGE keeps its own.
        stream.storage = (await js.stream_info(names.stream)).config.storage
        info = await js.update_stream(stream)
    consumer = ConsumerConfig(
        durable_name=names.consumer,
        name=names.consumer,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.ack_wait_s,
        max_deliver=job["max_deliver"] + DELIVERY_SLACK,
        max_ack_pending=max_in_flight,
        filter_subject=names.subject,
    )
    # The notice carries the terms processors serve the job by (see
    # jobsys.nats.notices), only when the consumer has exactly these.
    body = b""
    try:
        await js.add_consumer(names.stream, consumer)
        body = created_body(
            StreamTerms(stream.description or "", consumer.max_deliver or 0, settings.ack_wait_s)
        )
    except BadRequestError:
        # A consumer of that name with another configuration: it still
        # delivers the job's tasks, so keep it (its deliveries so far count
        # towards max_deliver) rather than fail; anything else is raised.
        await js.consumer_info(names.stream, names.consumer)
        log.warning("job consumer kept with its own configuration",
                    extra={"stream": names.stream})  # fmt: skip
    return info, body


async def tasks_of_messages(
    js: JetStreamContext, names: JobNames, seqs: Sequence[int]
) -> dict[int, tuple[int, int] | None]:
    """Which task each message of the job's stream is: ``{seq: (job_id, task_no)}``
    from its Nats-Msg-Id, or None for a sequence that holds no task message
    (none stored there, acked already, an advisory, no stream). One lookup per
    sequence, all at once; the ledger asks only about results whose sequence
    is not the one it recorded."""

    async def one(seq: int) -> tuple[int, int] | None:
        try:
            msg = await js.get_msg(names.stream, seq)
        except NotFoundError:
            return None
        if msg.subject != names.subject:
            return None
        return parse_msg_id((msg.headers or {}).get(MSG_ID_HEADER))

    unique = sorted(set(seqs))
    found = await asyncio.gather(*(one(seq) for seq in unique))
    return dict(zip(unique, found, strict=True))


async def delete_job_stream(nc: NATS, js: JetStreamContext, names: JobNames) -> bool:
    """Delete the job's stream (and with it its consumer), and say so; False if it
    was not there."""
    try:
        await js.delete_stream(names.stream)
    except NotFoundError:
        return False
    await notice_job_stream(nc, names, "DELETED")
    return True


async def delete_job_consumer(js: JetStreamContext, names: JobNames) -> bool:
    """Delete the job's consumer (its stream and messages stay); False if it was not there."""
    try:
        await js.delete_consumer(names.stream, names.consumer)
    except NotFoundError:
        return False
    return True


async def stream_exists(js: JetStreamContext, names: JobNames) -> bool:
    """Whether the job's stream exists."""
    try:
        await js.stream_info(names.stream)
    except NotFoundError:
        return False
    return True


async def all_streams_info(js: JetStreamContext, subject: str | None = None) -> list[StreamInfo]:
    """Every stream of the account with its state (only those whose subjects
    match `subject`, when given: see `subjects.tasks_wildcard`).

    A listing is paged by offset: a stream deleted before the page boundary
    while it is read shifts the next page, so a stream can be missing from
    it although it existed all along. Absence from a listing is never proof
    that a stream is gone: ask for that stream (`stream_info`) to be sure.

    The server answers a listing in pages (256 streams each); nats-py's
    `streams_info()` returns one page, so follow the offsets to the end.

    On a JetStream cluster a page also names the streams whose leader did not
    answer in time (`missing`: a stream being created or electing a leader);
    nats-py drops that list, and a stream absent from a listing would look
    deleted. Each missing stream is asked for directly instead: found, it is
    listed; not found, it is not; any other error is raised (the caller
    learns nothing, rather than something false).
    """
    found: list[StreamInfo] = []
    offset = 0
    while True:
        # The raw API answer: nats-py keeps no public way to read `missing`.
        page = await js._api_request(
            f"{js._prefix}.STREAM.LIST",
            json.dumps(
                {"offset": offset} if subject is None else {"offset": offset, "subject": subject}
            ).encode(),
            timeout=js._timeout,
        )
        streams = page.get("streams") or []
        missing = page.get("missing") or []
        found.extend(StreamInfo.from_response(info) for info in streams)
        if missing:
            log.info("stream listing: streams did not answer", extra={"missing": len(missing)})
        for name in missing:
            with contextlib.suppress(NotFoundError):
                found.append(await js.stream_info(name))
        offset += len(streams) + len(missing)
        if (not streams and not missing) or offset >= int(page.get("total") or 0):
            return found


def parse_server_time(value: datetime | str | None) -> datetime | None:
    """A server timestamp as a UTC datetime (nats-py parses it; older versions gave RFC 3339
    text, whose fraction has 0-9 digits)."""
    if value is None or isinstance(value, datetime):
        return value
    text = value.strip().removesuffix("Z").removesuffix("+00:00")
    whole, _, fraction = text.partition(".")
    return datetime.fromisoformat(f"{whole}.{(fraction + '000000')[:6]}+00:00")


# Rounds of listing and deleting in `delete_streams` (each deletion shifts
# the pages after it, so one pass over a long listing leaves some behind).
DELETE_ROUNDS_MAX = 20


async def delete_streams(js: JetStreamContext, wanted: Callable[[str], bool]) -> int:
    """Delete every stream whose name `wanted` accepts, listing again until a
    listing finds none; returns how many were deleted."""
    deleted = 0
    for _ in range(DELETE_ROUNDS_MAX):
        names = [i.config.name for i in await all_streams_info(js) if i.config.name]
        doomed = [n for n in names if wanted(n)]
        if not doomed:
            break
        for name in doomed:
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)
                deleted += 1
    return deleted


def namespace_stream(namespace: str) -> Callable[[str], bool]:
    """Whether a stream is the namespace's: a job stream, or its presence bucket's
    (`jobsys.nats.presence.bucket_name`)."""
    return lambda name: name.startswith(f"{namespace}_") or name == f"KV_{namespace}_members"

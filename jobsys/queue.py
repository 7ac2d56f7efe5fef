"""NATS JetStream: one stream and one durable pull consumer per job.

Names come from the namespace so deployments and test runs sharing a server
never touch each other's streams. Async functions take a connection; sync
code (Dramatiq actors, the CLI) goes through `NatsBridge`, which keeps one
long-lived connection per process on a background event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import nats
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
from nats.js.errors import NotFoundError

from jobsys.errors import ServiceUnavailable
from jobsys.settings import Settings, get_settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# Re-running bootstrap within this window never duplicates a task message.
DUPLICATE_WINDOW_S = 600.0
PUBLISH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class JobNames:
    """NATS names of one job's resources."""

    stream: str
    subject: str
    consumer: str

    @classmethod
    def of(cls, namespace: str, job_id: int) -> JobNames:
        """The names for `job_id` in `namespace`."""
        return cls(
            stream=f"{namespace}_job_{job_id}",
            subject=f"{namespace}.tasks.{job_id}",
            consumer=f"{namespace}_job_{job_id}_workers",
        )

    @property
    def max_deliveries(self) -> str:
        """The subject of JetStream's advisory that a task message exhausted max_deliver."""
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{self.consumer}"


def stream_prefix(namespace: str) -> str:
    """Every job stream of a namespace starts with this."""
    return f"{namespace}_job_"


def job_id_of_stream(namespace: str, stream: str) -> int | None:
    """The job id a stream of `namespace` belongs to, or None if not one of ours."""
    prefix = stream_prefix(namespace)
    rest = stream[len(prefix) :] if stream.startswith(prefix) else ""
    return int(rest) if rest.isdigit() else None


def msg_id(job_id: int, task_no: int) -> str:
    """The Nats-Msg-Id of a task message (deduplicates republishing)."""
    return f"{job_id}:{task_no}"


def parse_msg_id(value: str | None) -> tuple[int, int] | None:
    """(job_id, task_no) from a Nats-Msg-Id header, or None if malformed."""
    if not value:
        return None
    job, sep, task = value.partition(":")
    if not sep or not job.isdigit() or not task.isdigit():
        return None
    return int(job), int(task)


@dataclass(frozen=True)
class AckSubject:
    """What a JetStream reply (ack) subject says about its message."""

    stream: str
    consumer: str
    delivered: int


def parse_ack_subject(reply: str) -> AckSubject | None:
    """Parse ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``
    (or the newer form with domain and account hash). None if it is not one."""
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    if len(tokens) == 9:
        stream, consumer, delivered = tokens[2], tokens[3], tokens[4]
    elif len(tokens) >= 11:
        stream, consumer, delivered = tokens[4], tokens[5], tokens[6]
    else:
        return None
    if not delivered.isdigit():
        return None
    return AckSubject(stream=stream, consumer=consumer, delivered=int(delivered))


async def connect(url: str | None = None, name: str = "jobsys") -> NATS:
    """A connection that reconnects forever; raises ServiceUnavailable if none at first."""
    url = url or get_settings().nats_url

    # Say once that NATS went away and once that it came back; the client's
    # errors while reconnecting (one per attempt) are debug noise.
    down = False

    async def on_error(exc: Exception) -> None:
        level = logging.DEBUG if down else logging.WARNING
        log.log(level, "nats error", extra={"error": repr(exc)})

    async def on_disconnect() -> None:
        nonlocal down
        if not down:
            log.info("nats disconnected")
        down = True

    async def on_reconnect() -> None:
        nonlocal down
        down = False
        log.info("nats reconnected")

    try:
        return await nats.connect(
            servers=[url],
            name=name,
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
    except Exception as exc:
        raise ServiceUnavailable(
            f"NATS not reachable at {url} ({exc.__class__.__name__}); run `make services`"
        ) from None


def jetstream(nc: NATS, settings: Settings | None = None) -> JetStreamContext:
    """A JetStream context whose async publish window is the configured one."""
    settings = settings or get_settings()
    return nc.jetstream(timeout=10, publish_async_max_pending=settings.publish_window)


def describe_stream(pipeline: str) -> str:
    """A job stream's description: what processors need to know to serve it."""
    return json.dumps({"pipeline": pipeline})


def pipeline_of_stream(description: str | None) -> str | None:
    """The pipeline named in a job stream's description, or None."""
    try:
        value = json.loads(description or "")
    except ValueError:
        return None
    pipeline = value.get("pipeline") if isinstance(value, dict) else None
    return pipeline if isinstance(pipeline, str) else None


async def ensure_job_stream(
    js: JetStreamContext, names: JobNames, pipeline: str, max_deliver: int, settings: Settings
) -> None:
    """Create the job's stream and durable pull consumer if missing (idempotent).

    Processors learn the pipeline from the stream's description, so they
    need NATS and Redis only, never Postgres.

    The stream also captures the consumer's MAX_DELIVERIES advisories, so
    the reconciler finds every exhausted task even if none ran when it was
    exhausted. Per job, not one wildcard stream per namespace: two streams'
    subjects may not overlap, and namespaces share a server.
    """
    await js.add_stream(
        StreamConfig(
            name=names.stream,
            description=describe_stream(pipeline),
            subjects=[names.subject, names.max_deliveries],
            # Work-queue retention: an acked task message is removed, so the
            # stream's message count is exactly what is still unacked.
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            duplicate_window=DUPLICATE_WINDOW_S,
        )
    )
    await js.add_consumer(
        names.stream,
        ConsumerConfig(
            durable_name=names.consumer,
            name=names.consumer,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=settings.ack_wait_s,
            max_deliver=max_deliver,
            max_ack_pending=settings.max_ack_pending,
            filter_subject=names.subject,
        ),
    )


async def publish_tasks(
    js: JetStreamContext, names: JobNames, job_id: int, tasks: Sequence[tuple[int, str]]
) -> None:
    """Publish task messages and wait until JetStream stored every one.

    Async publish keeps a window of acks in flight (the JetStream context's
    `publish_async_max_pending`), which is ~8x faster than awaiting each.
    """
    futures = []
    for task_no, payload in tasks:
        fut = await js.publish_async(
            names.subject,
            payload.encode("utf-8"),
            headers={"Nats-Msg-Id": msg_id(job_id, task_no)},
        )
        futures.append(fut)
    results = await asyncio.wait_for(
        asyncio.gather(*futures, return_exceptions=True), PUBLISH_TIMEOUT_S
    )
    for res in results:
        if isinstance(res, BaseException):
            raise res


async def delete_job_stream(js: JetStreamContext, names: JobNames) -> bool:
    """Delete the job's stream (and with it its consumer); False if it was not there."""
    try:
        await js.delete_stream(names.stream)
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


async def all_streams_info(js: JetStreamContext) -> list[StreamInfo]:
    """Every stream of the account with its state.

    The server answers a listing in pages (256 streams each); nats-py's
    `streams_info()` returns one page, so follow the offsets to the end.
    """
    found: list[StreamInfo] = []
    while True:
        page = await js.streams_info(offset=len(found))
        if not page:
            return found
        found.extend(page)


async def list_job_streams(js: JetStreamContext, namespace: str) -> dict[str, int]:
    """Every job stream of the namespace: ``{stream_name: job_id}``."""
    found: dict[str, int] = {}
    for info in await all_streams_info(js):
        name = info.config.name or ""
        job_id = job_id_of_stream(namespace, name)
        if job_id is not None:
            found[name] = job_id
    return found


def delivered_at_ns(reply: str) -> int | None:
    """When the server delivered the message (ns since the epoch), from its ack subject."""
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    ts = tokens[7] if len(tokens) == 9 else tokens[9] if len(tokens) >= 11 else ""
    return int(ts) if ts.isdigit() else None


def parse_server_time(value: datetime | str | None) -> datetime | None:
    """A server timestamp as a UTC datetime (nats-py parses it; older versions gave RFC 3339
    text, whose fraction has 0-9 digits)."""
    if value is None or isinstance(value, datetime):
        return value
    text = value.strip().removesuffix("Z").removesuffix("+00:00")
    whole, _, fraction = text.partition(".")
    return datetime.fromisoformat(f"{whole}.{(fraction + '000000')[:6]}+00:00")


async def ack_current_replies(
    nc: NATS, js: JetStreamContext, stream: str, replies: Sequence[str]
) -> int:
    """Ack the replies that belong to the stream as it exists now; returns how many.

    The reconciler re-creates a stream NATS lost. A reply delivered by the
    old stream names a sequence that, in the new stream, is another task's
    message: acking it would remove a task nobody ran. So replies delivered
    before the current stream was created are not acked (their message is
    gone with the old stream anyway).
    """
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return 0  # deleted (teardown): nothing left to ack
    created = parse_server_time(info.created)
    if created is None:
        current = list(replies)
    else:
        since_us = int(created.timestamp() * 1_000_000)
        current = [
            r for r in replies if (ts := delivered_at_ns(r)) is None or ts // 1000 >= since_us
        ]
    if len(current) < len(replies):
        log.info(
            "stale acks dropped", extra={"stream": stream, "count": len(replies) - len(current)}
        )
    await ack_replies(nc, current)
    return len(current)


async def ack_replies(nc: NATS, replies: Sequence[str], verb: bytes = b"+ACK") -> None:
    """Acknowledge (or ``-NAK``/``+TERM``) messages by their reply subjects, then flush."""
    for reply in replies:
        await nc.publish(reply, verb)
    await nc.flush(timeout=10)


class NatsBridge:
    """A sync facade over one NATS connection living on a background event loop."""

    def __init__(self, url: str | None = None) -> None:
        self._url = url or get_settings().nats_url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="jobsys-nats", daemon=True
        )
        self._thread.start()
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._connecting: asyncio.Lock | None = None

    async def _conn(self) -> tuple[NATS, JetStreamContext]:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._nc is None or self._nc.is_closed:
                self._nc = await connect(self._url, name=f"jobsys-{os.getpid()}")
                self._js = jetstream(self._nc)
        assert self._js is not None
        return self._nc, self._js

    def run(self, fn: Callable[[NATS, JetStreamContext], Awaitable[T]], timeout: float = 60.0) -> T:
        """Run ``fn(nc, js)`` on the bridge's loop and return its result."""

        async def call() -> T:
            nc, js = await self._conn()
            return await fn(nc, js)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout)

    def close(self) -> None:
        """Drain the connection and stop the loop."""

        async def shutdown() -> None:
            if self._nc is not None and not self._nc.is_closed:
                # flush + close: drain would wait up to 30 s on subscriptions.
                with contextlib.suppress(Exception):
                    await self._nc.flush(timeout=5)
                await self._nc.close()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        except Exception:
            log.debug("nats bridge close failed", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)


_bridge: NatsBridge | None = None
_bridge_pid: int | None = None
_bridge_lock = threading.Lock()


def bridge() -> NatsBridge:
    """This process's NATS bridge (re-created after a fork)."""
    global _bridge, _bridge_pid
    with _bridge_lock:
        if _bridge is None or _bridge_pid != os.getpid():
            _bridge = NatsBridge()
            _bridge_pid = os.getpid()
        return _bridge


def close_bridge() -> None:
    """Close this process's bridge if it has one."""
    global _bridge, _bridge_pid
    with _bridge_lock:
        if _bridge is not None and _bridge_pid == os.getpid():
            _bridge.close()
        _bridge = None
        _bridge_pid = None

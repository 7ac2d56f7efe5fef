"""NATS JetStream: one stream and one durable pull consumer per job.

Names come from the namespace so deployments and test runs sharing a server
never touch each other's streams. Async functions take a connection; sync
code (Dramatiq actors, the CLI) goes through `NatsBridge`, which keeps one
long-lived connection per process on a background event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

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
from nats.js.errors import BadRequestError, NotFoundError

from jobsys.credentials import AccessSettingError, open_nats, refused_for_good
from jobsys.errors import ServiceUnavailable
from jobsys.probes import one_line, redact
from jobsys.settings import Settings, get_settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# Re-running bootstrap within this window never duplicates a task message.
DUPLICATE_WINDOW_S = 600.0
# One call of publish_tasks (waiting for permits of the async window, then for
# the acks of what it published) takes at most this long...
PUBLISH_TIMEOUT_S = 30.0
# ... plus this much per message published in one call (a chunk of 5,000: 10 s more).
PUBLISH_PER_TASK_S = 0.002
# JetStream's error code: a stream of that name exists with another configuration.
STREAM_NAME_IN_USE = 10058


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
    stream_seq: int  # where the message sits in the stream


def parse_ack_subject(reply: str) -> AckSubject | None:
    """Parse ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``
    (or the newer form with domain and account hash). None if it is not one."""
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    if len(tokens) == 9:
        stream, consumer, delivered, sseq = tokens[2], tokens[3], tokens[4], tokens[5]
    elif len(tokens) >= 11:
        stream, consumer, delivered, sseq = tokens[4], tokens[5], tokens[6], tokens[7]
    else:
        return None
    if not delivered.isdigit() or not sseq.isdigit():
        return None
    return AckSubject(stream, consumer, int(delivered), int(sseq))


async def connect(
    url: str | None = None, name: str = "jobsys", settings: Settings | None = None
) -> NATS:
    """A connection that reconnects forever, with the credentials and TLS of the settings
    (jobsys.credentials). While no server answers at first it keeps trying; credentials
    or TLS that a server refuses raise ServiceUnavailable at once (retrying cannot help)."""
    settings = settings or get_settings()
    url = url or settings.nats_url

    # Say once that NATS went away and once that it came back; the client's
    # errors while reconnecting (one per attempt) are debug noise.
    down = False
    connecting = True

    async def on_error(exc: Exception) -> None:
        if connecting and refused_for_good(exc):
            # Raised out of nats-py's first-connect loop, which would retry for ever.
            raise ServiceUnavailable(f"NATS at {redact(url)} refused us: {one_line(exc)}")
        level = logging.DEBUG if down else logging.WARNING
        log.log(level, "nats error", extra={"error": redact(repr(exc))})

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
        nc = await open_nats(
            url,
            settings,
            name=name,
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
    except (ServiceUnavailable, AccessSettingError):
        raise
    except Exception as exc:
        raise ServiceUnavailable(
            f"NATS not reachable at {redact(url)} ({exc.__class__.__name__}); run `make services`"
        ) from None
    connecting = False
    return nc


def jetstream(nc: NATS, settings: Settings | None = None) -> JetStreamContext:
    """A JetStream context whose async publish window is the configured one."""
    settings = settings or get_settings()
    return nc.jetstream(timeout=10, publish_async_max_pending=settings.publish_window)


def describe_stream(pipeline: str, task_timeout_s: float | None = None) -> str:
    """A job stream's description: what processors need to know to serve it
    (they never read Postgres): the pipeline and the job's task time limit."""
    described: dict[str, Any] = {"pipeline": pipeline}
    if task_timeout_s is not None:
        described["task_timeout_s"] = task_timeout_s
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


def task_timeout_of_stream(description: str | None) -> float | None:
    """The task time limit in a job stream's description, or None (a stream made
    before jobs had one: the processor's JOBSYS_TASK_TIMEOUT_S applies)."""
    value = _described(description).get("task_timeout_s")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


async def ensure_job_stream(
    js: JetStreamContext, names: JobNames, job: Mapping[str, Any], settings: Settings
) -> None:
    """Create the job's stream and durable pull consumer if missing (idempotent).

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
        description=describe_stream(job["pipeline"], job.get("task_timeout_s")),
        subjects=[names.subject, names.max_deliveries],
        # Work-queue retention: an acked task message is removed, so the
        # stream's message count is exactly what is still unacked.
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
        # On a JetStream cluster, R3 survives the loss of one node.
        num_replicas=settings.stream_replicas,
    )
    try:
        await js.add_stream(stream)
    except BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
        # The stream exists with another configuration (made by an older
        # version, or with other settings): bring it to this one rather than
        # failing every bootstrap and repair of the job for ever.
        log.info("job stream updated to the current configuration",
                 extra={"stream": names.stream})  # fmt: skip
        await js.update_stream(stream)
    consumer = ConsumerConfig(
        durable_name=names.consumer,
        name=names.consumer,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.ack_wait_s,
        max_deliver=job["max_deliver"],
        max_ack_pending=max_in_flight,
        filter_subject=names.subject,
    )
    try:
        await js.add_consumer(names.stream, consumer)
    except BadRequestError:
        # A consumer of that name with another configuration: it still
        # delivers the job's tasks, so keep it (its deliveries so far count
        # towards max_deliver) rather than fail; anything else is raised.
        await js.consumer_info(names.stream, names.consumer)
        log.warning("job consumer kept with its own configuration",
                    extra={"stream": names.stream})  # fmt: skip


async def publish_tasks(
    js: JetStreamContext, names: JobNames, job_id: int, tasks: Sequence[tuple[int, str]]
) -> list[int]:
    """Publish task messages, wait until JetStream stored every one, and return
    each one's stream sequence (in the order of `tasks`).

    A message JetStream drops as a duplicate (same Nats-Msg-Id within the
    duplicate window) is not stored again; its PubAck names the sequence of
    the message already there, which is where that task sits.

    Async publish keeps a window of acks in flight (the JetStream context's
    `publish_async_max_pending`), which is ~8x faster than awaiting each.
    Each ack in flight holds one of the window's permits until it arrives. An
    ack NATS loses (the server restarted with a window in flight) never
    arrives: so waiting for a permit is bounded too, and whatever way this
    ends, every publish of ours still in flight is cancelled, which gives its
    permit back. Otherwise the connection's window stays taken for ever and
    every later publish in this process waits (the chaos suite found it).
    """
    futures: list[asyncio.Future[Any]] = []
    # One deadline for the whole call, not one per message: nats-py's own
    # bound on the wait for a permit (`wait_stall`) costs a task and a timer
    # per message, which made bootstrap publishing ~2x slower.
    deadline = PUBLISH_TIMEOUT_S + len(tasks) * PUBLISH_PER_TASK_S
    try:
        async with asyncio.timeout(deadline):
            for task_no, payload in tasks:
                fut = await js.publish_async(
                    names.subject,
                    payload.encode("utf-8"),
                    headers={"Nats-Msg-Id": msg_id(job_id, task_no)},
                )
                futures.append(fut)
            results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        for fut in futures:
            fut.cancel()  # a no-op for those answered
    seqs: list[int] = []
    for res in results:
        if isinstance(res, BaseException):
            raise res
        seqs.append(res.seq)
    return seqs


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
        return parse_msg_id((msg.headers or {}).get("Nats-Msg-Id"))

    unique = sorted(set(seqs))
    found = await asyncio.gather(*(one(seq) for seq in unique))
    return dict(zip(unique, found, strict=True))


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
            json.dumps({"offset": offset}).encode(),
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
        """Run ``fn(nc, js)`` on the bridge's loop and return its result.

        Past `timeout` the call is cancelled on the loop (and TimeoutError
        raised): work its caller gave up on does not go on in the background.
        """
        future = self.submit(fn)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def submit(self, fn: Callable[[NATS, JetStreamContext], Awaitable[T]]) -> Future[T]:
        """Start ``fn(nc, js)`` on the bridge's loop; the future holds its result
        (the caller goes on meanwhile: a fill writes one chunk to Postgres while
        the next is published). A caller that stops waiting cancels it."""

        async def call() -> T:
            nc, js = await self._conn()
            return await fn(nc, js)

        return asyncio.run_coroutine_threadsafe(call(), self._loop)

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

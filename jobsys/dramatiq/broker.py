"""Dramatiq's Redis broker, configured from settings.

Redis is only the transport: nothing in it is needed to know a job's state.
`heartbeat_timeout` and `maintenance_chance` default low/high so the messages
a killed worker held come back in seconds, not the minutes Dramatiq's
defaults take (DESIGN.md, "Facts measured").

An idle Dramatiq consumer polls its queue with a growing back-off (up to
the worker's timeout, 100 ms): every hop of a small job (submit ->
bootstrap, processor -> recording) waited for it. So each enqueue also
pushes a *wake* token on the queue's wake list, and an idle consumer waits
on that list (BLPOP, the same timeout) instead of sleeping: it fetches as
soon as something was enqueued. The token is a hint only: a lost one costs
one poll period, and a failed push never fails the enqueue.

"Maintenance" (giving a dead worker's messages back) runs inside Dramatiq's
Lua script on a random share of broker commands, and lists keys (KEYS) to do
it. Processes that only send -- processors -- run without it: consumers do it
all the time anyway, and a processor's Redis user then needs nothing but
enqueueing (deploy/redis/jobsys-acl.conf, docs/security.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import dramatiq
import redis
from dramatiq import Consumer, Message, MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.encoder import JSONEncoder, MessageData
from dramatiq.errors import ConnectionClosed

from jobsys import jsontext
from jobsys.credentials import redis_connection_kwargs
from jobsys.settings import Settings, get_settings

RESULTS_QUEUE = "results"
CONTROL_QUEUE = "control"
# Completion hooks have a queue of their own, consumed by a small pool of its
# own in each worker (jobsys.worker.run): a receiver that hangs can only hold
# up other hooks, never a bootstrap or a result batch.
HOOKS_QUEUE = "hooks"
# Connection timeouts: a Redis that stops answering fails a send (retried by
# the caller) instead of hanging it.
SOCKET_TIMEOUT_S = 10
SOCKET_CONNECT_TIMEOUT_S = 5
HEALTH_CHECK_INTERVAL_S = 15
# A queue's wake list (see the module's docstring) is forgotten after this
# long without a push, so tokens nobody waited for do not pile up.
WAKE_TTL_MS = 60_000
# Dramatiq's own idle back-off under a waking consumer: the wait is on the
# wake list, not in a sleep.
INNER_POLL_MS = 1
# An idle consumer's first wait after a message, doubled up to its timeout.
IDLE_WAIT_MIN_S = 0.005
MAX_DOUBLINGS = 16
# How often a consumer holding all it may prefetch looks for a free slot.
FULL_POLL_S = 0.005

log = logging.getLogger(__name__)


def wake_key(namespace: str, queue_name: str) -> str:
    """The wake list of `queue_name` in the Dramatiq namespace `namespace`."""
    return f"{namespace}:{queue_name}.wake"


def refused_write(exc: BaseException) -> bool:
    """Whether `exc` is Redis refusing a write it will take again later: at
    `maxmemory` under `noeviction` (OOM), a replica (READONLY), a failed
    snapshot with stop-writes-on-bgsave-error (MISCONF)."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError | redis.exceptions.ReadOnlyError):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("MISCONF")


class JobsysBroker(RedisBroker):
    """Dramatiq's Redis broker, with an ack or nack that Redis refuses retried until it
    is taken.

    Every command of Dramatiq's Redis script starts with a write (the worker's
    heartbeat), so at `maxmemory` under `noeviction` Redis refuses even acks.
    Dramatiq retries an ack every few seconds only after a *connection* error;
    any other error leaves the message unacked in Redis until the worker
    restarts (then it runs again). Raised as a connection error, a refused ack
    is retried until Redis takes writes again: the worker thread waits (nothing
    could be recorded meanwhile anyway) and then goes on.
    """

    def _dispatch(self, command: str) -> Callable[..., Any]:
        dispatch: Callable[..., Any] = super()._dispatch(command)
        if command not in ("ack", "nack"):
            return dispatch

        def guarded(queue_name: str, *args: Any) -> Any:
            try:
                return dispatch(queue_name, *args)
            except redis.ResponseError as exc:
                if refused_write(exc):
                    raise ConnectionClosed(exc) from None
                raise

        return guarded

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Dramatiq's enqueue, then a wake token for the queue's idle consumers (not
        for a delayed message: Dramatiq's delay queue hands it over when due)."""
        sent = super().enqueue(message, delay=delay)
        if delay is None:
            key = wake_key(self.namespace, message.queue_name)
            try:
                pipe = self.client.pipeline(transaction=False)
                pipe.rpush(key, b"1")
                pipe.pexpire(key, WAKE_TTL_MS)
                pipe.execute()
            except redis.RedisError as exc:
                # Only a hint: consumers still poll within their timeout.
                log.debug("wake token not pushed", extra={"error": repr(exc)})
        return sent

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        """Dramatiq's consumer, idle-waiting on the queue's wake list (up to `timeout`
        ms) instead of sleeping."""
        inner = super().consume(queue_name, prefetch, timeout=INNER_POLL_MS)
        key = wake_key(self.namespace, queue_name)
        return WakingConsumer(inner, self.client, key, prefetch, timeout)


class WakingConsumer(Consumer):
    """A Dramatiq consumer whose idle wait ends when a message is enqueued."""

    def __init__(
        self, inner: Consumer, client: redis.Redis, key: str, prefetch: int, timeout_ms: int
    ) -> None:
        self._inner = inner
        self._prefetch = prefetch
        self._misses = 0
        self._client = client
        self._key = key
        self._timeout_s = max(timeout_ms, INNER_POLL_MS) / 1000

    def __next__(self) -> MessageProxy | None:
        message = self._inner.__next__()
        if message is not None:
            self._misses = 0
            return message
        if getattr(self._inner, "outstanding_message_count", 0) >= self._prefetch:
            # Not idle but full: every message it may hold is being worked on, so
            # it did not even look. What frees a slot is an ack, not an enqueue:
            # look again shortly rather than wait for a token.
            time.sleep(FULL_POLL_S)
            return None
        # The wait grows from IDLE_WAIT_MIN_S after a message: Dramatiq's consumer
        # thread sends the acks its workers finished only between two calls, and
        # a message not acked yet holds a prefetch place.
        wait_s = min(IDLE_WAIT_MIN_S * 2**self._misses, self._timeout_s)
        self._misses = min(self._misses + 1, MAX_DOUBLINGS)
        try:
            if self._client.blpop([self._key], timeout=wait_s) is not None:
                # Woken: the next fetch sees every message enqueued so far, so
                # the tokens of the others are spent too.
                self._client.delete(self._key)
                self._misses = 0
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None
        except redis.RedisError as exc:
            # Not allowed to wait on it (an older ACL), or Redis refusing
            # writes: fall back to a sleep-length wait.
            log.debug("wake list not read", extra={"error": repr(exc)})
            time.sleep(wait_s)
        return None

    def ack(self, message: MessageProxy) -> None:
        self._inner.ack(message)

    def nack(self, message: MessageProxy) -> None:
        self._inner.nack(message)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        self._inner.requeue(messages)

    def close(self) -> None:
        self._inner.close()


class FastJSONEncoder(JSONEncoder):
    """Dramatiq's JSON encoder, the same bytes and values (so processes of an older
    version read and check what this one writes, and the reverse), through orjson
    where it is sure to agree (jobsys.jsontext): a result batch is JSON-encoded,
    decoded and signature-checked once per message."""

    def encode(self, data: MessageData) -> bytes:
        return jsontext.dumps(data)

    def decode(self, data: bytes) -> MessageData:
        # Anything orjson cannot read exactly goes to Dramatiq's own decode,
        # which raises its DecodeError as before.
        value: MessageData = jsontext.loads(data, fallback=super().decode)
        return value


def make_broker(settings: Settings | None = None, maintenance: bool = True) -> RedisBroker:
    """A Redis broker in this deployment's namespace (no maintenance: a sender only)."""
    settings = settings or get_settings()
    # The pool is built here, not by RedisBroker(url=...): given a URL,
    # Dramatiq builds it from the URL alone and drops every other connection
    # option (timeouts, TLS files).
    pool = redis.ConnectionPool.from_url(
        settings.redis_url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_CONNECT_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        **redis_connection_kwargs(settings),
    )
    return JobsysBroker(
        client=redis.Redis(connection_pool=pool),
        namespace=settings.dramatiq_namespace,
        heartbeat_timeout=settings.heartbeat_timeout_ms,
        maintenance_chance=settings.maintenance_chance if maintenance else 0,
    )


def setup_broker(maintenance: bool = True) -> dramatiq.Broker:
    """Install the jobsys broker as Dramatiq's global broker, and its JSON encoder
    (`FastJSONEncoder`) as Dramatiq's global encoder (once per process).

    The first call decides `maintenance`: `jobsys process` calls this with
    False before anything sends."""
    current = dramatiq.get_broker() if _has_global_broker() else None
    if isinstance(current, RedisBroker) and getattr(current, "_jobsys", False):
        return current
    dramatiq.set_encoder(FastJSONEncoder())
    broker = make_broker(maintenance=maintenance)
    broker._jobsys = True  # type: ignore[attr-defined]
    dramatiq.set_broker(broker)
    return broker


def reset_broker() -> None:
    """Forget this process's jobsys broker (tests that point it at another Redis)."""
    import dramatiq.broker as b

    current = b.global_broker
    if isinstance(current, RedisBroker) and getattr(current, "_jobsys", False):
        current.client.close()
        b.global_broker = None


def _has_global_broker() -> bool:
    import dramatiq.broker as b

    return b.global_broker is not None

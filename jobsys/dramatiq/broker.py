"""Dramatiq's Redis broker, configured from settings.

Redis is only the transport: nothing in it is needed to know a job's state.
`heartbeat_timeout` and `maintenance_chance` default low/high so the messages
a killed worker held come back in seconds, not the minutes Dramatiq's
defaults take (DESIGN.md, "Facts measured").

"Maintenance" (giving a dead worker's messages back) runs inside Dramatiq's
Lua script on a random share of broker commands, and lists keys (KEYS) to do
it. Processes that only send -- processors -- run without it: consumers do it
all the time anyway, and a processor's Redis user then needs nothing but
enqueueing (deploy/redis/jobsys-acl.conf, docs/security.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
import redis
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

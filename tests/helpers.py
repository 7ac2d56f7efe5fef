"""Test helpers that drive the real services by hand (no workers running)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import redis
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

import jobsys
from devtools.process import wait_until_up
from jobsys.api.items import counted_items
from jobsys.bootstrap.start import run_bootstrap
from jobsys.dramatiq.broker import setup_broker
from jobsys.nats.admin import delete_streams, namespace_stream
from jobsys.nats.bridge import bridge
from jobsys.nats.connect import connect
from jobsys.nats.subjects import JobNames, parse_msg_id
from jobsys.pg.db import connection
from jobsys.pg.queries import Q
from jobsys.settings import Settings, get_settings


def make_started_job(count: int, **kwargs: Any) -> int:
    """Submit a job (its bootstrap message goes unconsumed) and bootstrap it in-process."""
    job = jobsys.submit("echo", counted_items(count), **kwargs)
    assert run_bootstrap(job.id) in {"published", "empty"}
    return job.id


def pull_results(job_id: int, n: int, *, fail: set[int] | None = None) -> list[dict[str, Any]]:
    """Fetch up to `n` real task messages of the job and turn them into result items,
    as a processor would (echo pipeline), without acking them."""
    names = JobNames.of(get_settings().namespace, job_id)
    fail = fail or set()

    async def fetch(nc: Any, js: Any) -> list[dict[str, Any]]:
        sub = await js.pull_subscribe_bind(consumer=names.consumer, stream=names.stream)
        items: list[dict[str, Any]] = []
        while len(items) < n:
            try:
                msgs = await sub.fetch(min(n - len(items), 500), timeout=2)
            except TimeoutError:
                break
            for msg in msgs:
                ids = parse_msg_id(msg.headers.get("Nats-Msg-Id"))
                assert ids is not None
                task = ids[1]
                failed = task in fail
                items.append(
                    {
                        "task": task,
                        "status": "failed" if failed else "done",
                        "result": None if failed else json.loads(msg.data),
                        "error": "asked to fail" if failed else None,
                        "reply": msg.reply,
                        "deliveries": msg.metadata.num_delivered,
                    }
                )
        await sub.unsubscribe()
        return items

    return bridge().run(fetch)


def ledger(job_id: int) -> dict[str, int]:
    """The ledger's counts of a job, by status."""
    with connection() as conn:
        row = conn.execute(Q.ledger_counts, {"job_id": job_id}).fetchone()
    assert row is not None
    return dict(row)


def counters(job_id: int) -> dict[str, int]:
    """The job row's counter columns."""
    view = jobsys.get_job(job_id)
    return {
        "done": view.done,
        "failed": view.failed,
        "lost": view.lost,
        "cancelled": view.cancelled,
        "total": view.total,
    }


def assert_counters_match_ledger(job_id: int) -> None:
    """Counter columns equal the ledger's counts, and nothing is counted twice."""
    led = ledger(job_id)
    cnt = counters(job_id)
    for key in ("done", "failed", "lost", "cancelled", "total"):
        assert cnt[key] == led[key], f"job {job_id}: {key} counter {cnt[key]} != ledger {led[key]}"


def events_of(job_id: int, event: str) -> list[dict[str, Any]]:
    """The details of the job's `event` events, oldest first."""
    with connection() as conn:
        rows = conn.execute(
            "SELECT detail FROM job_events WHERE job_id = %s AND event = %s ORDER BY id",
            (job_id, event),
        ).fetchall()
    return [r["detail"] for r in rows]


def status_events(job_id: int) -> list[str]:
    """The statuses the job moved to, in order (from job_events)."""
    with connection() as conn:
        rows = conn.execute(
            "SELECT detail->>'to' AS to FROM job_events "
            "WHERE job_id = %s AND event = 'status' ORDER BY id",
            (job_id,),
        ).fetchall()
    return [r["to"] for r in rows]


def stream_exists(job_id: int) -> bool:
    """Whether the job's NATS stream exists."""
    names = JobNames.of(get_settings().namespace, job_id)

    async def check(nc: Any, js: Any) -> bool:
        try:
            await js.stream_info(names.stream)
        except NotFoundError:
            return False
        return True

    return bridge().run(check)


def fast(**overrides: Any) -> Settings:
    """This run's settings with the reconciler's thresholds made small."""
    small: dict[str, Any] = {
        "lost_after_s": 0.2, "queued_stale_s": 0.2, "cancel_grace_s": 0.2, "stray_grace_s": 0.0
    }  # fmt: skip
    return get_settings().model_copy(update={**small, **overrides})


def messages_in_stream(job_id: int) -> list[tuple[int, int]]:
    """Every task message the job's stream holds, in stream order: (task, sequence)."""
    names = JobNames.of(get_settings().namespace, job_id)

    async def read(nc: Any, js: Any) -> list[tuple[int, int]]:
        found: list[tuple[int, int]] = []
        seq = 1
        while True:
            try:
                msg = await js.get_msg(names.stream, seq, subject=names.subject, next=True)
            except NotFoundError:
                return found
            seq = msg.seq + 1
            ids = parse_msg_id((msg.headers or {}).get("Nats-Msg-Id"))
            assert ids is not None and ids[0] == job_id
            found.append((ids[1], msg.seq))

    return bridge().run(read)


def leave_only(job_id: int) -> None:
    """Before a test starts real processes for one job: delete the job streams and
    the unconsumed Dramatiq messages earlier tests of this run left in the
    namespace, so those processes serve this job alone (not thousands of
    leftover tasks and a backlog of bootstraps and teardowns)."""
    settings = get_settings()
    mine = JobNames.of(settings.namespace, job_id).stream

    async def wipe(nc: Any, js: Any) -> None:
        ours = namespace_stream(settings.namespace)
        await delete_streams(js, lambda name: ours(name) and name != mine and "_job_" in name)

    bridge().run(wipe)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        keys = list(client.scan_iter(f"{settings.dramatiq_namespace}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class Subscriber:
    """NATS subscriptions on a thread (and connection) of their own, as a context:
    subscribed before entering returns, closed on exit. `handlers` maps each
    subject to what is called with each message, in the order NATS sent them."""

    # How often the thread looks whether it should stop.
    TICK_S = 0.02

    def __init__(self, handlers: Mapping[str, Callable[[Msg], object]]) -> None:
        self._handlers = dict(handlers)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        nc = await connect()
        for subject, handle in self._handlers.items():

            async def on(msg: Msg, handle: Callable[[Msg], object] = handle) -> None:
                handle(msg)

            await nc.subscribe(subject, cb=on)
        await nc.flush()
        self._ready.set()
        while not self._stop.is_set():
            await asyncio.sleep(self.TICK_S)
        await nc.flush()
        await nc.close()

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@contextlib.contextmanager
def configured_nats(root: Path, config: str = "", jetstream: str = "") -> Iterator[str]:
    """A private nats-server on a free port with `config` lines at the top level
    and `jetstream` inside its jetstream block; yields its URL."""
    root.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    conf = root / "nats.conf"
    conf.write_text(
        f"host: 127.0.0.1\nport: {port}\n{config}\n"
        f'jetstream {{ store_dir: "{root}/js"\n{jetstream} }}\n'
    )
    with (root / "nats.log").open("ab") as log:
        proc = subprocess.Popen(["nats-server", "-c", str(conf)], stdout=log, stderr=log)
    url = f"nats://127.0.0.1:{port}"
    try:
        assert wait_until_up("nats", url, proc) is None
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def lock_waiters() -> int:
    """How many sessions of this run's database wait on a lock now."""
    with connection() as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row["n"]) if row else 0


def take_sent(queue: str, actor_name: str, *, wait_s: float = 0.5) -> list[Any]:
    """Take (fetch and ack) every message waiting on a Dramatiq queue of this test's
    namespace; those for `actor_name`, oldest first (as a worker would get them;
    the tests that use this run no worker)."""
    broker = setup_broker()
    consumer = broker.consume(queue, prefetch=100, timeout=int(wait_s * 1000))
    taken: list[Any] = []
    try:
        while (message := next(consumer)) is not None:
            consumer.ack(message)
            if message.actor_name == actor_name:
                taken.append(message)
    finally:
        consumer.close()
    return taken


def freeze_at_pause(marker: Path, worker: subprocess.Popen[bytes], within_s: float) -> None:
    """Wait until `worker` (started with JOBSYS_PAUSE_AT and JOBSYS_PAUSE_FILE=`marker`)
    reaches its pause point, then SIGSTOP it there: a worker frozen mid-transaction."""
    end = time.monotonic() + within_s
    while not marker.exists():
        assert time.monotonic() < end, "the worker never reached the pause point"
        time.sleep(0.1)
    assert int(marker.read_text()) == worker.pid
    os.kill(worker.pid, signal.SIGSTOP)

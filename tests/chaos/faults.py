"""The faults a chaos run injects, and the outages it keeps going while other faults fall.

| fault | what it does |
|---|---|
| `kill_worker` | SIGKILL one worker (restarted at once, as a Procfile runner would) |
| `kill_processor` | SIGKILL one processor (its execution children die with it) |
| `kill_serve` | SIGKILL `jobsys serve`, the task gateway (restarted at once on its port) |
| `kill_remote` | SIGKILL the remote processor (`jobsys process --server`; its leases lapse) |
| `restart_nats` | SIGTERM NATS and start it again (JetStream data kept) |
| `stop_workers` | SIGSTOP every worker for STOP_ACK_WAITS ack_waits, then SIGCONT |
| `duplicate_item` | a result batch waiting in Redis re-sent, signed, with one task twice in it |
| `flush_redis` | FLUSHDB: every queued Dramatiq message gone |
| `restart_redis` | SIGKILL Redis (no persistence) and start it again |
| `delete_stream` | a started job's stream deleted, then its bootstrap sent again |
| `restart_postgres` | Postgres stopped `immediate` (a crash) and started again |
| `duplicate_results` | copies of result batches waiting in Redis enqueued again |
| `stall_postgres` | Postgres down for STALL_ACK_WAITS ack_waits |
| `redis_full` | every worker stopped and Redis full (`noeviction`), see `redis_full` |

Every kind is injected once as early as it can bite (in this order; a kind
that needs something to act on, like a started job or a batch waiting in
Redis, waits for it), then kinds are drawn at random (the two outages half as
often as the others). A fault that found nothing to act on is not counted;
it is retried every ARMED_RETRY_S until it bites. During a Postgres stall no
fault that needs Postgres is drawn; during a worker outage no worker fault
is; an outage starts only if it fits in the fault window.

The scheduler keeps enqueueing reconcile passes through a worker outage (no
worker runs them); the harness runs a pass every OUTAGE_RECONCILE_EVERY_S
itself meanwhile, as cron would.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import redis

from jobsys.dramatiq.broker import RESULTS_QUEUE, setup_broker
from jobsys.dramatiq.messages import send_bootstrap
from jobsys.dramatiq.signing import SIGNATURE_OPTION, require_secret, signature
from jobsys.nats.admin import delete_job_stream
from jobsys.nats.bridge import bridge
from jobsys.nats.subjects import JobNames
from jobsys.ops.runner import LocalSystem
from jobsys.pg.db import close_pool, connection
from jobsys.reconciler import reconcile_pass
from jobsys.settings import get_settings
from tests.chaos.hooks import Probe, submit_probe, worker_peak_rss_mb
from tests.chaos.mix import SMALL_MAX_DELIVER, JobPlan
from tests.chaos.servers import PrivateServers

FAULTS = (
    "kill_worker",
    "kill_processor",
    "kill_serve",
    "kill_remote",
    "restart_nats",
    "stop_workers",
    "duplicate_item",
    "flush_redis",
    "restart_redis",
    "delete_stream",
    "restart_postgres",
    "duplicate_results",
    # Before the Postgres stall: both are outages, and in a short run there is
    # room for the first of each only if this one does not wait for the stall.
    "redis_full",
    "stall_postgres",
)
# Not drawn while Postgres is down (they need it to pick a target, or are Postgres faults).
NEEDS_POSTGRES = {"restart_postgres", "stall_postgres", "delete_stream", "stop_workers",
                  "redis_full"}  # fmt: skip
# Not drawn while the workers are stopped.
WORKER_FAULTS = {"kill_worker", "stop_workers", "redis_full"}
# Not drawn while Redis is full: they would end it early (a restart resets its
# limit), or need it to take a message.
REDIS_FAULTS = {"restart_redis", "flush_redis", "redis_full", "delete_stream", "duplicate_item",
                "duplicate_results"}  # fmt: skip
# A Postgres outage this many ack_waits long: results cannot be recorded for
# that long, so without holding them every waiting task would be redelivered.
STALL_ACK_WAITS = 3
# Workers stopped this many ack_waits (25 s at ack_wait 5 s). A processor that
# let a result go once sent would see its task redelivered every ack_wait, so a
# max_deliver-2 job would exhaust after 2 ack_waits; one that let it go after
# holding it one ack_wait (the old `JOBSYS_RESULT_HOLD_S`, set short) after
# max_deliver x (hold + ack_wait) = 4 ack_waits. Holding while the processor
# lives must lose nothing, however long.
STOP_ACK_WAITS = 5
# Workers stopped this many ack_waits while Redis fills up and refuses writes
# (longer than the 10 s a NATS flush waits: a flush in flight times out).
REDIS_FULL_ACK_WAITS = 3
# Redis stays full this long after the workers resume, then takes writes again.
REDIS_FULL_AFTER_S = 5.0
# Room above Redis's use when the workers stop: the results waiting fill it
# within seconds (a chaos result is ~100 bytes; each processor holds 2,000).
REDIS_ROOM_BYTES = 256 * 1024
# The harness's own reconcile passes while no worker runs the scheduler's.
OUTAGE_RECONCILE_EVERY_S = 5.0
# At the end of the faults, the last outage pass is waited for this long.
OUTAGE_PASS_JOIN_S = 60.0
# How often the results waiting in Redis are counted during a worker outage.
SAMPLE_EVERY_S = 1.0
# A stream is deleted only under a job with at least this many tasks left.
MIN_PENDING_TO_DELETE = 20
# Detail keys that name something rather than count it.
NOT_FIGURES = {"job_id", "task"}
# Outages are drawn half as often as the other kinds: at one fault every ~4 s,
# a 10-minute run then has ~8 of each (~200 s of stopped workers, ~120 s of
# Postgres down), and the system still gets time to work between them.
OUTAGES = {"stop_workers", "stall_postgres", "redis_full"}
OUTAGE_WEIGHT = 0.5
# Gap between faults (seconds), drawn uniformly.
GAP_S = (1.5, 6.0)
# A fault that found nothing to act on is tried again this much later.
RETRY_S = 1.0
# A kind that found nothing to act on when its turn came (no started job, no
# batch waiting) is "armed": tried again this often until it bites, between
# the other faults, so every kind comes early and gets its share.
ARMED_RETRY_S = 0.5


@dataclass
class FaultRecord:
    """One fault that bit."""

    at: float  # wall clock
    t: float  # seconds into the run
    kind: str
    detail: dict[str, Any]


@dataclass
class Death:
    """A worker, processor or scheduler that exited (restarted at once)."""

    at: float  # wall clock, when the harness saw it
    kind: str
    pid: int
    code: int | None
    ours: bool  # killed by a fault (else it exited on its own)


@dataclass
class Faults:
    """Injects faults into a running system and keeps its outages going."""

    rng: random.Random
    system: LocalSystem
    servers: PrivateServers
    plans: list[JobPlan]
    started: float  # monotonic start of the run
    ack_wait: float
    ends: float = float("inf")  # monotonic end of the fault window: outages end by then
    # Every kind is injected this many times before any is chosen at random
    # (`--min-each`): a 10-minute run once ended with the workers stopped only
    # twice of the three asked, by the luck of the draw.
    want_each: int = 1
    log: list[FaultRecord] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    # Figures per kind (summed over its injections), for the report.
    figures: dict[str, Counter[str]] = field(default_factory=dict)
    deaths: list[Death] = field(default_factory=list)
    # When NATS was restarted: a delivery in flight then (a task message on its
    # way to a processor, a nak) is lost with the connection, and JetStream
    # still counts it, like a delivery a processor's death cut.
    nats_restarts: list[float] = field(default_factory=list)
    pg_back_at: float | None = None
    workers_back_at: float | None = None
    stopped: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ours: set[int] = field(default_factory=set)
    next_fault: float = 0.0
    next_rss: float = 0.0
    next_outage_pass: float = 0.0
    armed: set[str] = field(default_factory=set)
    next_armed: float = 0.0
    peak_waiting: int = 0
    next_sample: float = 0.0
    outage_pass: threading.Thread | None = None
    # When Redis takes writes again (monotonic), during `redis_full`.
    redis_lift_at: float | None = None
    redis_full_since: float = 0.0  # wall clock
    # Outages as (kind, start, end), wall clock: probe jobs are judged from their end.
    outages: list[tuple[str, float, float]] = field(default_factory=list)
    outage_started: dict[str, float] = field(default_factory=dict)
    probes: list[Probe] = field(default_factory=list)
    peak_worker_rss_mb: float = 0.0
    probe_pending: bool = False
    # Which worker outage runs (`stop_workers` or `redis_full`), for its figures.
    outage_kind: str = "stop_workers"

    def __post_init__(self) -> None:
        self.next_fault = self.started + self.rng.uniform(1, 4)

    @property
    def pg_up(self) -> bool:
        """Whether Postgres is up (not in a stall)."""
        return self.pg_back_at is None

    @property
    def workers_up(self) -> bool:
        """Whether the workers run (not stopped by `stop_workers`)."""
        return self.workers_back_at is None

    # -- the loop's two calls ---------------------------------------------------

    def tick(self, now: float) -> None:
        """End outages that are due, run the outage's reconcile passes, restart the dead."""
        if self.pg_back_at is not None and now >= self.pg_back_at:
            self._postgres_back()
        if self.workers_back_at is not None and now >= self.workers_back_at:
            self._workers_back()
        if self.redis_lift_at is not None and self.workers_up and now >= self.redis_lift_at:
            self._redis_takes_writes()
        if self.redis_lift_at is not None and self.pg_up:
            self.probe_into_full_redis()
        if now >= self.next_rss:
            self.next_rss = now + SAMPLE_EVERY_S * 5
            pids = [p.pid for p in self.system.workers if p.poll() is None]
            self.peak_worker_rss_mb = max(self.peak_worker_rss_mb, worker_peak_rss_mb(pids))
        if self.workers_back_at is not None and now >= self.next_sample:
            self.next_sample = now + SAMPLE_EVERY_S
            self.peak_waiting = max(self.peak_waiting, sum(self._results_waiting().values()))
        if self.workers_back_at is not None and now >= self.next_outage_pass:
            self.next_outage_pass = now + OUTAGE_RECONCILE_EVERY_S
            self._during_outage()
        self.restart_the_dead()
        if now >= self.next_fault:
            bit = self.inject_next(now)
            self.next_fault = now + (self.rng.uniform(*GAP_S) if bit else RETRY_S)
        elif self.armed and now >= self.next_armed:
            self.next_armed = now + ARMED_RETRY_S
            for kind in [k for k in FAULTS if k in self.armed and self._allowed(k)]:
                if self._try(kind, now):
                    break

    def end(self) -> None:
        """End every outage now (the fault window is over)."""
        if self.pg_back_at is not None:
            self._postgres_back()
        if self.workers_back_at is not None:
            self._workers_back()
        if self.redis_lift_at is not None:
            self._redis_takes_writes()
        if self.outage_pass is not None:
            self.outage_pass.join(OUTAGE_PASS_JOIN_S)

    def owed(self) -> list[str]:
        """Fault kinds not injected yet (a window that ends with some owed proves less)."""
        return [k for k in FAULTS if self.counts[k] == 0]

    def inject_next(self, now: float) -> bool:
        """Inject one fault: of the kinds injected fewer than `want_each` times, the
        least injected that bites (in FAULTS order among equals); else one at random."""
        allowed = [k for k in FAULTS if self._allowed(k)]
        if not allowed:
            return False
        first = sorted(
            (k for k in allowed if self.counts[k] < self.want_each), key=lambda k: self.counts[k]
        )
        weights = [OUTAGE_WEIGHT if k in OUTAGES else 1.0 for k in allowed]
        for kind in [*first, self.rng.choices(allowed, weights)[0]]:
            if self._try(kind, now):
                return True
            self.armed.add(kind)
        return False

    def _try(self, kind: str, now: float) -> bool:
        """Inject `kind` if it finds something to act on; record it if it did."""
        try:
            detail = getattr(self, kind)()
        except Exception:
            print(f"chaos: fault {kind} failed:\n{traceback.format_exc()}", flush=True)
            detail = None
        if detail is None:
            return False
        self.armed.discard(kind)
        self.counts[kind] += 1
        self.figures.setdefault(kind, Counter()).update(
            {k: v for k, v in detail.items() if isinstance(v, int) and k not in NOT_FIGURES}
        )
        record = FaultRecord(time.time(), now - self.started, kind, detail)
        self.log.append(record)
        print(f"chaos: t={record.t:5.1f}s {kind} {detail or ''}", flush=True)
        return True

    def _allowed(self, kind: str) -> bool:
        if not self.pg_up and kind in NEEDS_POSTGRES:
            return False
        if self.workers_back_at is not None and kind in WORKER_FAULTS:
            return False
        if self.redis_lift_at is not None and kind in REDIS_FAULTS:
            return False
        # An outage starts only if it can last its whole length in the window.
        lasts = {"stop_workers": STOP_ACK_WAITS, "stall_postgres": STALL_ACK_WAITS,
                 "redis_full": REDIS_FULL_ACK_WAITS + 1}.get(kind, 0)  # fmt: skip
        return time.monotonic() + lasts * self.ack_wait <= self.ends

    # -- processes --------------------------------------------------------------

    def _kill_one(self, procs: list[subprocess.Popen[bytes]]) -> dict[str, Any] | None:
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            return None
        victim = self.rng.choice(alive)
        self.ours.add(victim.pid)
        victim.send_signal(signal.SIGKILL)
        return {}

    def kill_worker(self) -> dict[str, Any] | None:
        return self._kill_one(self.system.workers)

    def kill_processor(self) -> dict[str, Any] | None:
        return self._kill_one(self.system.processors)

    def _group(self, kind: str) -> list[subprocess.Popen[bytes]]:
        return next((procs for k, procs, _ in self.system.groups() if k == kind), [])

    def kill_serve(self) -> dict[str, Any] | None:
        return self._kill_one(self._group("serve"))

    def kill_remote(self) -> dict[str, Any] | None:
        return self._kill_one(self._group("remote"))

    def restart_the_dead(self) -> None:
        """Restart every worker, processor and scheduler that died (a Procfile runner's job)."""
        for kind, procs, start in self.system.groups():
            for p in list(procs):
                code = p.poll()
                if code is None:
                    continue
                procs.remove(p)
                ours = p.pid in self.ours
                self.deaths.append(Death(time.time(), kind, p.pid, code, ours))
                if not ours:
                    print(f"chaos: a {kind} exited on its own (code {code})", flush=True)
                start()
                if kind == "worker" and self.workers_back_at is not None:
                    # The outage is of every worker: a replacement waits too.
                    self.system.workers[-1].send_signal(signal.SIGSTOP)
                    self.stopped.append(self.system.workers[-1])

    def stop_workers(self) -> dict[str, Any] | None:
        """SIGSTOP every worker, if a job with a small max_deliver has tasks left."""
        small = self._started_jobs(max_deliver_at_most=SMALL_MAX_DELIVER)
        if not small:
            return None
        self.stopped = [p for p in self.system.workers if p.poll() is None]
        for p in self.stopped:
            p.send_signal(signal.SIGSTOP)
        self.workers_back_at = time.monotonic() + STOP_ACK_WAITS * self.ack_wait
        self.outage_kind = "stop_workers"
        self.outage_started["workers"] = time.time()
        self.next_outage_pass = time.monotonic() + OUTAGE_RECONCILE_EVERY_S
        self.peak_waiting = 0
        return {
            "workers": len(self.stopped),
            "seconds": int(STOP_ACK_WAITS * self.ack_wait),
            "small_max_deliver_tasks_left": sum(int(j["pending"]) for j in small),
        }

    def _during_outage(self) -> None:
        """A reconcile pass as cron would run it: on a thread of its own, since it
        may wait for a row a frozen worker holds, and the loop must go on to
        resume the workers."""
        if not self.pg_up or (self.outage_pass is not None and self.outage_pass.is_alive()):
            return
        self.outage_pass = threading.Thread(target=self._outage_pass, daemon=True)
        self.outage_pass.start()

    def _outage_pass(self) -> None:
        try:
            reconcile_pass(trigger="chaos")
            self.figures.setdefault(self.outage_kind, Counter())["harness_passes"] += 1
        except Exception as exc:
            print(f"chaos: reconcile pass during the outage failed: {exc!r}", flush=True)

    def _workers_back(self) -> None:
        self.peak_waiting = max(self.peak_waiting, sum(self._results_waiting().values()))
        # Results that waited in Redis for the recorder (their tasks held in NATS).
        self.figures.setdefault(self.outage_kind, Counter())["results_waiting_peak"] += (
            self.peak_waiting
        )
        for p in self.stopped:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
        print(f"chaos: workers resumed; up to {self.peak_waiting} results waited", flush=True)
        self.stopped = []
        self.workers_back_at = None
        self.outages.append(("workers", self.outage_started.pop("workers", 0.0), time.time()))

    # -- servers ----------------------------------------------------------------

    def restart_nats(self) -> dict[str, Any]:
        self.nats_restarts.append(time.time())
        self.servers.restart_nats()
        return {}

    def flush_redis(self) -> dict[str, Any]:
        client = redis.Redis.from_url(get_settings().redis_url)
        client.flushdb()
        client.close()
        return {}

    def restart_redis(self) -> dict[str, Any]:
        self.servers.restart_redis()
        return {}

    def restart_postgres(self) -> dict[str, Any]:
        self.servers.restart_postgres()
        close_pool()
        return {}

    def stall_postgres(self) -> dict[str, Any]:
        self.servers.stop_postgres("immediate")
        close_pool()
        self.pg_back_at = time.monotonic() + STALL_ACK_WAITS * self.ack_wait
        self.outage_started["postgres"] = time.time()
        return {"seconds": int(STALL_ACK_WAITS * self.ack_wait)}

    def _postgres_back(self) -> None:
        self.servers.start_postgres()
        close_pool()
        self.pg_back_at = None
        self.outages.append(("postgres", self.outage_started.pop("postgres", 0.0), time.time()))

    def redis_full(self) -> dict[str, Any] | None:
        """Stop every worker and set Redis's limit just above its use (`noeviction`):
        the processors' results fill it and it refuses writes (at once, if no job
        runs: the limit is then set below its use). The workers resume after
        REDIS_FULL_ACK_WAITS ack_waits; Redis takes writes REDIS_FULL_AFTER_S
        later. A probe job is submitted once Redis refuses writes."""
        room = REDIS_ROOM_BYTES if self._started_jobs() else -1
        client = redis.Redis.from_url(get_settings().redis_url)
        try:
            client.config_set("maxmemory-policy", "noeviction")
            used = int(client.info("memory")["used_memory"])
            self.stopped = [p for p in self.system.workers if p.poll() is None]
            for p in self.stopped:
                p.send_signal(signal.SIGSTOP)
            client.config_set("maxmemory", max(used + room, 1))
        finally:
            client.close()
        self.workers_back_at = time.monotonic() + REDIS_FULL_ACK_WAITS * self.ack_wait
        self.redis_lift_at = self.workers_back_at + REDIS_FULL_AFTER_S
        self.outage_kind = "redis_full"
        self.outage_started["workers"] = self.redis_full_since = time.time()
        self.next_outage_pass = time.monotonic() + OUTAGE_RECONCILE_EVERY_S
        self.peak_waiting = 0
        self.probe_pending = True
        return {"workers": len(self.stopped), "seconds": int(REDIS_FULL_ACK_WAITS * self.ack_wait
                                                             + REDIS_FULL_AFTER_S)}  # fmt: skip

    def probe_into_full_redis(self) -> None:
        """Once Redis refuses writes during `redis_full`, submit a probe job into it."""
        if not self.probe_pending or self.redis_lift_at is None:
            return
        client = redis.Redis.from_url(get_settings().redis_url)
        try:
            info = client.info("memory")
        except redis.RedisError:
            return
        finally:
            client.close()
        if int(info["used_memory"]) < int(info["maxmemory"]):
            return
        self.probe_pending = False
        self.figures.setdefault("redis_full", Counter())["refused_writes"] += 1
        try:
            self.probes.append(submit_probe("redis_full"))
        except Exception as exc:
            print(f"chaos: probe into a full Redis not submitted: {exc!r}", flush=True)

    def _redis_takes_writes(self) -> None:
        client = redis.Redis.from_url(get_settings().redis_url)
        try:
            client.config_set("maxmemory", 0)
        except redis.RedisError as exc:
            print(f"chaos: Redis limit not lifted: {exc!r}", flush=True)
            return
        finally:
            client.close()
        self.redis_lift_at = None
        self.probe_pending = False
        self.outages.append(("redis", self.redis_full_since, time.time()))
        print("chaos: Redis takes writes again", flush=True)

    # -- result batches in Redis -----------------------------------------------

    def _results_client(self) -> tuple[dramatiq.Broker, Any, str]:
        broker = setup_broker()
        queue = f"{get_settings().dramatiq_namespace}:{RESULTS_QUEUE}"
        return broker, broker.client, queue  # type: ignore[attr-defined]

    def _results_waiting(self) -> dict[int, int]:
        """Results (items) per job in batches waiting in the Redis results queue."""
        try:
            _, client, queue = self._results_client()
            waiting: Counter[int] = Counter()
            for data in client.hvals(f"{queue}.msgs"):
                args = dramatiq.Message.decode(data).args
                waiting[int(args[0])] += len(args[1])
            return dict(waiting)
        except Exception:
            return {}

    def duplicate_results(self) -> dict[str, Any] | None:
        """Enqueue copies of result batches waiting in the results queue (signed as they were)."""
        broker, client, queue = self._results_client()
        raw = list(client.hvals(f"{queue}.msgs"))
        if not raw:
            return None
        copies = 0
        for data in self.rng.sample(raw, min(len(raw), 5)):
            msg = dramatiq.Message.decode(data)
            for _ in range(self.rng.choice([1, 2])):
                broker.enqueue(msg.copy(message_id=str(uuid.uuid4()), options={}))
                copies += 1
        return {"copies": copies}

    def duplicate_item(self) -> dict[str, Any] | None:
        """Re-send a waiting result batch with one of its tasks twice, signed with the run's
        secret; if no worker has fetched the original yet, take it out of the queue so
        the batch with the repeat is the one that counts those tasks."""
        broker, client, queue = self._results_client()
        waiting = list(client.lrange(queue, 0, 200))
        self.rng.shuffle(waiting)
        for rid in waiting:
            data = client.hget(f"{queue}.msgs", rid)
            if data is None:
                continue
            msg = dramatiq.Message.decode(data)
            job_id, items, notify = msg.args
            if not items:
                continue
            twice = items[self.rng.randrange(len(items))]
            repeated = list(items)
            repeated.insert(self.rng.randrange(len(items) + 1), twice)
            args = (job_id, repeated, notify)
            sig = signature(require_secret(), msg.actor_name, args, msg.kwargs)
            broker.enqueue(
                msg.copy(message_id=str(uuid.uuid4()), args=args,
                         options={SIGNATURE_OPTION: sig})
            )  # fmt: skip
            replaced = client.lrem(queue, 1, rid) == 1
            if replaced:
                client.hdel(f"{queue}.msgs", rid)
            return {"job_id": job_id, "task": twice.get("task"), "replaced": int(replaced)}
        return None

    # -- a job's stream ---------------------------------------------------------

    def _started_jobs(self, max_deliver_at_most: int | None = None) -> list[dict[str, Any]]:
        with connection() as conn:
            rows = conn.execute(
                "SELECT id, max_deliver, total_count - done_count - failed_count - lost_count"
                " - cancelled_count AS pending FROM jobs"
                " WHERE status = 'started' AND published_count > 0 ORDER BY id"
            ).fetchall()
        return [
            dict(r)
            for r in rows
            if r["pending"] > 0
            and (max_deliver_at_most is None or r["max_deliver"] <= max_deliver_at_most)
        ]

    def delete_stream(self) -> dict[str, Any] | None:
        """Delete a started job's stream (NATS lost it), then send its bootstrap again."""
        jobs = [j for j in self._started_jobs() if j["pending"] >= MIN_PENDING_TO_DELETE]
        if not jobs:
            return None
        job = self.rng.choice(jobs)
        names = JobNames.of(get_settings().namespace, job["id"])
        if not bridge().run(lambda nc, js: delete_job_stream(nc, js, names)):
            return None
        send_bootstrap(job["id"])
        return {"job_id": job["id"], "pending": int(job["pending"])}

"""The reconciler: finds every way a job can get stuck and un-sticks it.

One pass reads every active job's counters and ledger counts (one SQL query)
and NATS's view of it (stream and consumer info), and for each job that
needs attention takes a per-job advisory lock, looks again, and acts:

| finding            | action                                                        |
|--------------------|---------------------------------------------------------------|
| counters_drift     | counters set from the ledger (job_tasks), finalize if complete |
| tasks_exhausted    | MAX_DELIVERIES advisories -> those tasks lost, finalize       |
| idle_lost          | idle started job, NATS has nothing to deliver -> pending lost |
| waiting            | idle with messages NATS still holds: no action, says why      |
| stream_missing     | stream and consumer re-created, pending tasks republished     |
| consumer_missing   | consumer re-created                                           |
| bootstrap_stalled  | published_count < total, idle, no bootstrap running: re-enqueue |
| queued_stale       | queued and idle (its Dramatiq message was lost): re-enqueue   |
| cancel_overdue     | canceling past the grace period: forced revoked, teardown     |
| stray_stream       | stream of a final or unknown job of the namespace: deleted    |

Every write is plain SQL over the ledger and counters (sql/queries/reconcile.sql)
or a guarded `transition`; no job is loaded and saved back. Every pass is
recorded in reconcile_runs / reconcile_findings with what it saw and did.
Two passes may run at once (the scheduler's actor and cron): the per-job lock
means one acts and the other skips that job, and every action re-reads the
job under the lock first, so a pass never acts on what another already fixed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo, StreamInfo
from nats.js.errors import NotFoundError

from jobsys.db import Conn, connect_direct, connection
from jobsys.errors import JobNotFound
from jobsys.locks import lock_name, try_lock, unlock
from jobsys.queries import Q
from jobsys.queue import (
    JobNames,
    all_streams_info,
    bridge,
    delete_job_stream,
    ensure_job_stream,
    job_id_of_stream,
    parse_msg_id,
    publish_tasks,
)
from jobsys.settings import Settings, get_settings
from jobsys.states import FINAL, FINALIZABLE, OUTCOME, Status, transition

log = logging.getLogger(__name__)

# Tasks republished per round when a job's stream is re-created.
REPUBLISH_CHUNK = 5_000
# NATS info requests in flight at once while a pass looks at every job.
INFO_CONCURRENCY = 64
# Advisories handled per job per pass (the rest wait for the next pass).
MAX_ADVISORIES_PER_PASS = 5_000
# NATS calls of one pass may take this long in all.
NATS_TIMEOUT_S = 120.0

COUNTERS = ("done", "failed", "lost", "cancelled")
# Findings that need only the database; a job that has only these is not
# looked at in NATS again under its lock.
DB_ONLY = frozenset({"counters_drift", "cancel_overdue", "queued_stale", "bootstrap_stalled"})


# -- what a pass sees ---------------------------------------------------------


@dataclass
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

    @classmethod
    def of(
        cls, stream: StreamInfo | None, consumer: ConsumerInfo | None, advisories: int | None
    ) -> NatsView:
        """Build from stream and consumer info (either may be missing)."""
        view = cls(stream=stream is not None, consumer=consumer is not None, advisories=advisories)
        if stream is not None:
            view.messages = stream.state.messages
        if consumer is not None:
            view.num_pending = consumer.num_pending or 0
            view.num_ack_pending = consumer.num_ack_pending or 0
            view.num_redelivered = consumer.num_redelivered or 0
            view.num_waiting = consumer.num_waiting or 0
        return view

    @property
    def maybe_exhausted(self) -> bool:
        """The stream holds more than NATS may still deliver: exhausted tasks or advisories."""
        if self.advisories is not None:
            return self.advisories > 0
        if self.messages is None or self.num_pending is None or self.num_ack_pending is None:
            return False
        return self.messages > self.num_pending + self.num_ack_pending


@dataclass
class Finding:
    """One thing a pass found about a job, and what it did about it."""

    job_id: int | None
    kind: str
    action: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape `jobsys reconcile --json` prints."""
        return asdict(self)


@dataclass
class PassReport:
    """What one pass checked and found."""

    run_id: int
    jobs_checked: int
    findings: list[Finding]
    skipped_busy: int = 0

    def as_dict(self) -> dict[str, Any]:
        """``{"jobs_checked": n, "findings": [...]}`` (plus the run id)."""
        return {
            "run_id": self.run_id,
            "jobs_checked": self.jobs_checked,
            "findings": [f.as_dict() for f in self.findings],
        }


def _saw(job: dict[str, Any], nv: NatsView | None) -> dict[str, Any]:
    """What a finding records as seen: DB counters, ledger counts, NATS state."""
    return {
        "status": job["status"],
        "counters": {k: job[f"{k}_count"] for k in (*COUNTERS, "total", "published")},
        "ledger": {k: job[k] for k in ("pending", *COUNTERS, "total")},
        "idle_s": round(float(job["idle_s"]), 3),
        "nats": asdict(nv) if nv is not None else None,
    }


def diagnose(job: dict[str, Any], nv: NatsView | None, settings: Settings) -> list[str]:
    """The finding kinds of one active job, in the order they are acted on.

    `job` is a `reconcile_jobs` row; `nv` is NATS's view (started jobs only).
    """
    kinds: list[str] = []
    if any(job[f"{k}_count"] != job[k] for k in COUNTERS):
        kinds.append("counters_drift")
    status = job["status"]
    idle = float(job["idle_s"])
    if status == Status.CANCELING:
        if float(job["canceling_s"] or 0) >= settings.cancel_grace_s:
            kinds.append("cancel_overdue")
    elif status == Status.QUEUED:
        if idle >= settings.queued_stale_s:
            kinds.append("queued_stale")
    elif status == Status.STARTED and nv is not None:
        if not nv.stream:
            kinds.append("stream_missing")
        elif not nv.consumer:
            kinds.append("consumer_missing")
        if job["published_count"] < job["total_count"] and idle >= settings.queued_stale_s:
            kinds.append("bootstrap_stalled")
        if nv.stream and nv.consumer:
            if nv.maybe_exhausted:
                kinds.append("tasks_exhausted")
            published_all = job["published_count"] >= job["total_count"]
            if published_all and job["pending"] > 0 and idle >= settings.lost_after_s:
                if nv.num_pending == 0 and nv.num_ack_pending == 0:
                    kinds.append("idle_lost")
                else:
                    kinds.append("waiting")
    return kinds


# -- NATS observation -----------------------------------------------------------


async def _consumer_info(js: JetStreamContext, names: JobNames) -> ConsumerInfo | None:
    try:
        return await js.consumer_info(names.stream, names.consumer)
    except NotFoundError:
        return None


async def observe_job(js: JetStreamContext, names: JobNames) -> NatsView:
    """NATS's exact view of one job, advisories counted."""
    try:
        stream = await js.stream_info(names.stream, subjects_filter=names.max_deliveries)
    except NotFoundError:
        return NatsView.of(None, None, None)
    consumer = await _consumer_info(js, names)
    advisories = (stream.state.subjects or {}).get(names.max_deliveries, 0)
    return NatsView.of(stream, consumer, advisories)


async def _observe_all(
    js: JetStreamContext, namespace: str, started: list[int]
) -> tuple[dict[int, NatsView], dict[str, int]]:
    """Views of the started jobs, and every job stream of the namespace.

    One paged stream listing, then consumer info for started jobs with a
    stream, at most INFO_CONCURRENCY requests in flight.
    """
    streams: dict[str, StreamInfo] = {}
    for info in await all_streams_info(js):
        if info.config.name:
            streams[info.config.name] = info
    job_streams = {
        name: job_id
        for name in streams
        if (job_id := job_id_of_stream(namespace, name)) is not None
    }
    gate = asyncio.Semaphore(INFO_CONCURRENCY)

    async def one(job_id: int) -> tuple[int, NatsView]:
        names = JobNames.of(namespace, job_id)
        stream = streams.get(names.stream)
        if stream is None:
            return job_id, NatsView.of(None, None, None)
        async with gate:
            consumer = await _consumer_info(js, names)
        return job_id, NatsView.of(stream, consumer, None)

    views = dict(await asyncio.gather(*(one(j) for j in started)))
    return views, job_streams


# -- acting -----------------------------------------------------------------------


def _enqueue_teardown(job_id: int) -> None:
    """The finalize winner's follow-up; done inline when Redis is unreachable."""
    from jobsys.actors import teardown_job

    try:
        teardown_job.send(job_id)
    except Exception as exc:
        extra = {"job_id": job_id, "error": repr(exc)}
        log.warning("teardown not enqueued; running it here", extra=extra)
        from jobsys.teardown import run_teardown

        run_teardown(job_id, reason="reconcile")


def _try_finalize(conn: Conn, job_id: int, reason: str) -> Status | None:
    moved = transition(conn, job_id, OUTCOME, FINALIZABLE, reason)
    return moved.status if moved is not None else None


def mark_lost(conn: Conn, job_id: int, task_nos: list[int] | None, reason: str) -> int:
    """Move pending tasks (the given ones, or all) to lost and count them; in the
    caller's transaction. Returns how many really moved: a task a result already
    moved is neither moved nor counted again."""
    row = conn.execute(
        Q.mark_tasks_lost, {"job_id": job_id, "task_nos": task_nos, "reason": reason}
    ).fetchone()
    return int(row["moved"]) if row else 0


def _lose(job_id: int, task_nos: list[int] | None, reason: str) -> tuple[int, Status | None]:
    """Mark tasks lost and try to finalize, in one transaction; the winner enqueues teardown."""
    with connection() as conn, conn.transaction():
        moved = mark_lost(conn, job_id, task_nos, reason)
        final = _try_finalize(conn, job_id, f"reconcile: {reason}")
    if final is not None:
        _enqueue_teardown(job_id)
    return moved, final


def repair_counters(job_id: int) -> tuple[dict[str, int] | None, Status | None]:
    """Set a job's counters from the ledger; returns (counters before, finalized status).

    Lock order: the job row first (SELECT ... FOR UPDATE), then a fresh
    statement counts the ledger. Result batches lock their tasks and then the
    job row; we lock no task row (the count is a plain MVCC read), so there is
    no cycle and no deadlock. Under READ COMMITTED the count's snapshot starts
    after we hold the row lock: a batch that already added to the counters
    has committed and is in the count; a batch still open has not touched the
    job row yet, its task moves are invisible to the count, and it adds its
    share on top of the repaired values after we commit. A one-statement
    "UPDATE ... FROM (count)" would not be safe: its count snapshot predates
    the row lock it may wait for, so it could overwrite a batch's increment.
    """
    with connection() as conn, conn.transaction():
        before = conn.execute(Q.lock_job_row, {"job_id": job_id}).fetchone()
        if before is None:
            return None, None
        row = conn.execute(Q.repair_counters, {"job_id": job_id}).fetchone()
        if row is None:
            return None, None
        final = _try_finalize(conn, job_id, "reconcile: counters repaired from the ledger")
    if final is not None:
        _enqueue_teardown(job_id)
    return {k: before[f"{k}_count"] for k in COUNTERS}, final


async def read_exhausted(
    js: JetStreamContext, job_id: int, names: JobNames, limit: int = MAX_ADVISORIES_PER_PASS
) -> tuple[list[int], list[int]]:
    """Tasks whose message exhausted max_deliver, from the advisories in the job's stream.

    Returns (task numbers, stream sequences to delete once they are counted:
    the advisories and the exhausted task messages). An advisory whose task
    message is gone (acked late, so its result was committed) names no task.
    """
    task_nos: list[int] = []
    done_with: list[int] = []
    seq = 1
    while len(task_nos) < limit:
        try:
            adv = await js.get_msg(names.stream, seq, subject=names.max_deliveries, next=True)
        except NotFoundError:
            break
        assert adv.seq is not None
        seq = adv.seq + 1
        done_with.append(adv.seq)
        try:
            stream_seq = int(json.loads(adv.data or b"{}")["stream_seq"])
            task_msg = await js.get_msg(names.stream, stream_seq)
        except (NotFoundError, KeyError, ValueError, TypeError):
            continue
        ids = parse_msg_id((task_msg.headers or {}).get("Nats-Msg-Id"))
        if ids is not None and ids[0] == job_id:
            task_nos.append(ids[1])
            done_with.append(stream_seq)
    return task_nos, done_with


async def _delete_msgs(js: JetStreamContext, stream: str, seqs: list[int]) -> None:
    for seq in seqs:
        try:
            await js.delete_msg(stream, seq)
        except Exception:
            # Left for the next pass, which finds them already counted.
            log.debug("message not deleted", extra={"stream": stream, "seq": seq})


def _job_status(job_id: int) -> Status | None:
    with connection() as conn:
        row = conn.execute(Q.job_statuses, {"job_ids": [job_id]}).fetchone()
    return Status(row["status"]) if row else None


def _bootstrap_running(job_id: int) -> bool:
    with connect_direct() as conn:
        name = lock_name("bootstrap", job_id)
        if not try_lock(conn, name):
            return True
        unlock(conn, name)
        return False


class _Actor:
    """The actions of one job's reconcile, given what was seen under its lock."""

    def __init__(self, job: dict[str, Any], nv: NatsView | None, settings: Settings) -> None:
        self.job = job
        self.nv = nv
        self.settings = settings
        self.job_id: int = job["id"]
        self.names = JobNames.of(settings.namespace, self.job_id)

    def act(self, kind: str) -> tuple[str, dict[str, Any]]:
        """Do what `kind` calls for; returns (action, detail)."""
        handler: Callable[[], tuple[str, dict[str, Any]]] = getattr(self, kind)
        return handler()

    def counters_drift(self) -> tuple[str, dict[str, Any]]:
        before, final = repair_counters(self.job_id)
        if before is None:
            return "none", {"reason": "counters already agreed with the ledger"}
        detail: dict[str, Any] = {"before": before}
        if final is not None:
            detail["finalized"] = str(final)
        return "repaired", detail

    def cancel_overdue(self) -> tuple[str, dict[str, Any]]:
        from jobsys.teardown import run_teardown

        status = run_teardown(self.job_id, reason="reconcile: canceling past the grace period")
        return ("revoked" if status == Status.REVOKED else "none"), {"status": str(status)}

    def _reenqueue(self, from_: Status) -> tuple[str, dict[str, Any]]:
        from jobsys.jobs import enqueue_bootstrap

        if _bootstrap_running(self.job_id):
            return "none", {"reason": "a bootstrap is running"}
        if not enqueue_bootstrap(self.job_id):
            return "none", {"reason": "bootstrap could not be enqueued (Redis unreachable?)"}
        with connection() as conn:
            # So the next pass waits a full idle period before enqueuing again.
            conn.execute(Q.touch_progress, {"job_id": self.job_id, "from": [str(from_)]})
        return "enqueued_bootstrap", {}

    def queued_stale(self) -> tuple[str, dict[str, Any]]:
        return self._reenqueue(Status.QUEUED)

    def bootstrap_stalled(self) -> tuple[str, dict[str, Any]]:
        return self._reenqueue(Status.STARTED)

    def consumer_missing(self) -> tuple[str, dict[str, Any]]:
        self._ensure_stream()
        return "recreated_consumer", {}

    def _ensure_stream(self) -> None:
        job, s = self.job, self.settings
        bridge().run(
            lambda nc, js: ensure_job_stream(js, self.names, job["pipeline"], job["max_deliver"], s)
        )

    def stream_missing(self) -> tuple[str, dict[str, Any]]:
        # The bootstrap lock: a bootstrap publishing now would otherwise race
        # our republishing (it creates the stream too, and resumes from
        # published_count, so it would not republish the earlier tasks).
        with connect_direct() as lock_conn:
            name = lock_name("bootstrap", self.job_id)
            if not try_lock(lock_conn, name):
                return "none", {"reason": "a bootstrap is running; the next pass looks again"}
            try:
                return self._recreate()
            finally:
                unlock(lock_conn, name)

    def _recreate(self) -> tuple[str, dict[str, Any]]:
        self._ensure_stream()
        republished = 0
        from_task = 0
        while _job_status(self.job_id) == Status.STARTED:
            with connection() as conn:
                rows = conn.execute(
                    Q.pending_tasks_to_republish,
                    {"job_id": self.job_id, "from_task": from_task, "limit": REPUBLISH_CHUNK},
                ).fetchall()
            if not rows:
                break
            chunk = [(r["task_no"], r["payload"]) for r in rows]
            bridge().run(
                lambda nc, js, chunk=chunk: publish_tasks(js, self.names, self.job_id, chunk),  # type: ignore[misc]
                timeout=NATS_TIMEOUT_S,
            )
            republished += len(chunk)
            from_task = chunk[-1][0] + 1
        # Like bootstrap: a job that finished or was cancelled meanwhile must
        # not keep a stream its teardown already deleted.
        if _job_status(self.job_id) != Status.STARTED:
            bridge().run(lambda nc, js: delete_job_stream(js, self.names))
            return "none", {"reason": "job left started while its stream was re-created"}
        return "recreated", {"republished": republished}

    def tasks_exhausted(self) -> tuple[str, dict[str, Any]]:
        task_nos, seqs = bridge().run(
            lambda nc, js: read_exhausted(js, self.job_id, self.names), timeout=NATS_TIMEOUT_S
        )
        moved, final = (0, None)
        if task_nos:
            moved, final = _lose(self.job_id, task_nos, "delivered max_deliver times")
        # Only after the commit: if we die before, the next pass reads them again.
        if seqs:
            bridge().run(
                lambda nc, js: _delete_msgs(js, self.names.stream, seqs), timeout=NATS_TIMEOUT_S
            )
        detail: dict[str, Any] = {"advised": len(task_nos), "moved": moved}
        if final is not None:
            detail["finalized"] = str(final)
        return ("marked_lost" if moved else "none"), detail

    def idle_lost(self) -> tuple[str, dict[str, Any]]:
        moved, final = _lose(self.job_id, None, "idle with nothing left for NATS to deliver")
        detail: dict[str, Any] = {"moved": moved}
        if final is not None:
            detail["finalized"] = str(final)
        return ("marked_lost" if moved else "none"), detail

    def waiting(self) -> tuple[str, dict[str, Any]]:
        nv = self.nv
        assert nv is not None
        if (nv.num_pending or 0) > 0 and not nv.num_waiting:
            reason = "no processor is consuming"
        elif (nv.num_ack_pending or 0) > 0:
            reason = (
                f"a processor holds {nv.num_ack_pending} message(s): "
                "running, or results not yet recorded"
            )
        else:
            reason = "waiting for processors"
        return "none", {"reason": reason}


# -- a pass -------------------------------------------------------------------------


def _record(conn: Conn, run_id: int, finding: Finding) -> None:
    conn.execute(
        Q.insert_reconcile_finding,
        {
            "run_id": run_id,
            "job_id": finding.job_id,
            "kind": finding.kind,
            "action": finding.action,
            "detail": json.dumps(finding.detail, default=str),
        },
    )
    level = logging.INFO if finding.action != "none" else logging.DEBUG
    log.log(level, "reconcile finding", extra={"job_id": finding.job_id, "kind": finding.kind,
                                               "action": finding.action})  # fmt: skip


def _reconcile_job(
    job_id: int, settings: Settings, run_id: int, db_only: NatsView | None = None
) -> list[Finding]:
    """Look at one job again (under its lock) and act on every finding.

    `db_only`: the pass's NATS view of a job whose findings all come from
    the database; it is recorded as seen, not looked at again, and no
    NATS-based finding is acted on from it (it may be a second old).
    """
    with connection() as conn:
        job = conn.execute(Q.reconcile_job, {"job_id": job_id}).fetchone()
    if job is None:
        return []  # final since the pass started
    nv: NatsView | None = db_only
    if job["status"] == Status.STARTED and db_only is None:
        names = JobNames.of(settings.namespace, job_id)
        nv = bridge().run(lambda nc, js: observe_job(js, names), timeout=NATS_TIMEOUT_S)
    kinds = diagnose(job, nv, settings)
    if db_only is not None:
        kinds = [k for k in kinds if k in DB_ONLY]
    saw = _saw(job, nv)
    actor = _Actor(job, nv, settings)
    findings: list[Finding] = []
    for kind in kinds:
        try:
            action, detail = actor.act(kind)
        except Exception as exc:
            log.warning("reconcile action failed", extra={"job_id": job_id, "kind": kind,
                                                          "error": repr(exc)})  # fmt: skip
            action, detail = "error", {"error": repr(exc)}
        finding = Finding(job_id, kind, action, {"saw": saw, **detail})
        with connection() as conn:
            _record(conn, run_id, finding)
        findings.append(finding)
        if "finalized" in detail or action == "revoked":
            break  # the job is final: what else was seen no longer applies
    return findings


def _stray_streams(
    lock_conn: Conn, job_streams: dict[str, int], run_id: int, settings: Settings
) -> list[Finding]:
    """Delete the streams of final jobs and of jobs the database does not know."""
    if not job_streams:
        return []
    with connection() as conn:
        rows = conn.execute(Q.job_statuses, {"job_ids": sorted(set(job_streams.values()))})
        statuses = {r["id"]: r["status"] for r in rows.fetchall()}
    findings: list[Finding] = []
    for stream, job_id in sorted(job_streams.items()):
        status = statuses.get(job_id)
        if status is not None and status not in FINAL:
            continue
        name = lock_name("reconcile", job_id)
        if not try_lock(lock_conn, name):
            continue
        try:
            names = JobNames.of(settings.namespace, job_id)
            deleted = bridge().run(lambda nc, js, n=names: delete_job_stream(js, n))  # type: ignore[misc]
            if not deleted:
                continue  # its teardown (or another pass) deleted it since the listing
            finding = Finding(
                job_id, "stray_stream", "deleted",
                {"stream": stream, "job_status": status or "unknown"},
            )  # fmt: skip
            with connection() as conn:
                _record(conn, run_id, finding)
            findings.append(finding)
        finally:
            unlock(lock_conn, name)
    return findings


def reconcile_pass(settings: Settings | None = None, trigger: str = "cli") -> PassReport:
    """Run one pass over every active job and the namespace's streams; record it."""
    s = settings or get_settings()
    with connection() as conn:
        run = conn.execute(Q.insert_reconcile_run, {"trigger": trigger}).fetchone()
        assert run is not None
        run_id: int = run["id"]
        jobs = conn.execute(Q.reconcile_jobs).fetchall()
    started = [j["id"] for j in jobs if j["status"] == Status.STARTED]
    views, job_streams = bridge().run(
        lambda nc, js: _observe_all(js, s.namespace, started), timeout=NATS_TIMEOUT_S
    )
    report = PassReport(run_id=run_id, jobs_checked=len(jobs), findings=[])
    by_status: dict[str, int] = {}
    # One connection holds this pass's per-job session locks, taken and
    # released job by job (a job's actions span several transactions and
    # NATS calls, so a transaction-scoped lock would not cover them).
    with connect_direct() as lock_conn:
        for job in jobs:
            by_status[job["status"]] = by_status.get(job["status"], 0) + 1
            nv = views.get(job["id"])
            kinds = diagnose(job, nv, s)
            if not kinds:
                continue
            db_only = nv if nv is not None and DB_ONLY.issuperset(kinds) else None
            name = lock_name("reconcile", job["id"])
            if not try_lock(lock_conn, name):
                report.skipped_busy += 1
                log.info("job busy in another reconcile pass", extra={"job_id": job["id"]})
                continue
            try:
                report.findings += _reconcile_job(job["id"], s, run_id, db_only)
            except Exception as exc:
                # One job's trouble (e.g. NATS timing out) must not stop the pass.
                log.warning("reconcile of a job failed", extra={"job_id": job["id"],
                                                                "error": repr(exc)})  # fmt: skip
                finding = Finding(job["id"], "error", "none", {"error": repr(exc)})
                with connection() as conn:
                    _record(conn, run_id, finding)
                report.findings.append(finding)
            finally:
                unlock(lock_conn, name)
        report.findings += _stray_streams(lock_conn, job_streams, run_id, s)
    actions: dict[str, int] = {}
    for f in report.findings:
        actions[f.action] = actions.get(f.action, 0) + 1
    detail = {
        "active_by_status": by_status,
        "job_streams": len(job_streams),
        "actions": actions,
        "skipped_busy": report.skipped_busy,
    }
    keep = {"keep_s": s.history_days * 86_400}
    with connection() as conn:
        pruned = conn.execute(Q.prune_job_minutes, keep).rowcount
        pruned += conn.execute(Q.prune_quiet_runs, keep).rowcount
    detail["pruned_history_rows"] = pruned
    with connection() as conn:
        conn.execute(
            Q.finish_reconcile_run,
            {
                "run_id": run_id,
                "jobs_checked": report.jobs_checked,
                "findings": len(report.findings),
                "detail": json.dumps(detail),
            },
        )
    log.info("reconcile pass", extra={"run_id": run_id, "jobs_checked": report.jobs_checked,
                                      "findings": len(report.findings)})  # fmt: skip
    return report


# -- inspect ------------------------------------------------------------------------


def inspect_job(
    job_id: int, settings: Settings | None = None, findings: int = 10
) -> dict[str, Any]:
    """A job's counters, its ledger's counts and NATS's view side by side, with the
    reconciler's latest findings about it. Raises JobNotFound."""
    s = settings or get_settings()
    with connection() as conn:
        job = conn.execute(Q.get_job, {"job_id": job_id}).fetchone()
        if job is None:
            raise JobNotFound(job_id)
        ledger = conn.execute(Q.ledger_counts, {"job_id": job_id}).fetchone()
        found = conn.execute(Q.job_findings, {"job_id": job_id, "limit": findings}).fetchall()
    names = JobNames.of(s.namespace, job_id)
    nats: dict[str, Any]
    try:
        nv = bridge().run(lambda nc, js: observe_job(js, names), timeout=30)
        nats = {"stream_name": names.stream, "consumer_name": names.consumer, **asdict(nv)}
    except Exception as exc:
        nats = {"stream_name": names.stream, "error": f"NATS not readable: {exc!r}"}
    return {
        "job_id": job_id,
        "status": job["status"],
        "counters": {k: job[f"{k}_count"] for k in (*COUNTERS, "total", "published")},
        "ledger": dict(ledger) if ledger else {},
        "nats": nats,
        "findings": [dict(r) for r in found],
    }

"""Cancel latency: how fast a cancel really stops work on real processors.

A 20,000-task job of `sleep_ms` tasks runs on two processors
(`LocalSystem(processors=2)`); mid-run, `jobsys.cancel` is called. The tasks
run `timed_echo` (below), which appends a line to a log file when each task
STARTS and when it ENDS, so the processors' side is measured directly:

- cancel call: how long `jobsys.cancel` took (transition, stream delete, revoke);
- last result recorded after cancel returned: max(job_tasks.finished_at of
  done/failed rows) minus the moment cancel returned (<= 0: every recorded
  result committed before the cancel returned; after revoke nothing can be);
- tasks started after cancel returned, and the latest such start; the same
  from the moment cancel was called and from the stream's deletion (the
  processors learn of it by a JetStream advisory, so a few tasks already
  queued on their threads may still start within milliseconds);
- last task end after cancel returned: when the processors stopped running
  the job's code at all;
- late result batches (`late_results` events) and whether any counter moved
  after revoke.

    python -m bench.cancel_latency [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TASKS = 20_000
SLEEP_MS = 20
PROCESSORS = 2
CONCURRENCY = 8
# Cancel once this many results are counted (the job is well into its run).
CANCEL_AFTER_DONE = 2_000
# After the cancel, how long stragglers are given to show up before stopping.
SETTLE_S = 3.0
TARGET_S = 1.0
# The big cancel: a started job of this many pending tasks.
BIG_TASKS = 500_000
BIG_TASKS_QUICK = 100_000

_log_fd: int | None = None


def timed_echo(payload: dict[str, Any]) -> dict[str, Any]:
    """The echo pipeline, with its start and end appended to ``payload["log"]``.

    One ``os.write`` of a short line to an O_APPEND file is atomic, so the
    threads of both processors can share the file.
    """
    from jobsys.pipelines.builtins import echo

    global _log_fd
    if _log_fd is None:
        _log_fd = os.open(payload["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    n = payload.get("n")
    os.write(_log_fd, f"S {time.time():.6f} {n}\n".encode())
    try:
        return echo(payload)
    finally:
        os.write(_log_fd, f"E {time.time():.6f} {n}\n".encode())


def _read_log(path: Path) -> tuple[list[float], list[float]]:
    starts: list[float] = []
    ends: list[float] = []
    if not path.exists():
        return starts, ends
    for line in path.read_text().splitlines():
        kind, ts, _ = line.split(" ", 2)
        (starts if kind == "S" else ends).append(float(ts))
    return starts, ends


def _wait(cond: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("cancel latency bench: job made no progress")
        time.sleep(0.05)


def measure(
    tasks: int = TASKS,
    sleep_ms: int = SLEEP_MS,
    cancel_after_done: int = CANCEL_AFTER_DONE,
    log_dir: Path | None = None,
) -> dict[str, Any]:
    """One run: submit, wait until `cancel_after_done` results, cancel, measure."""
    import jobsys
    from jobsys.ops.runner import LocalSystem
    from jobsys.pg.db import connection

    work = Path(tempfile.mkdtemp(prefix="jobsys-cancel-"))
    timelog = work / "tasks.log"
    items = (json.dumps({"n": i, "sleep_ms": sleep_ms, "log": str(timelog)}) for i in range(tasks))
    system = LocalSystem(
        workers=1,
        processors=PROCESSORS,
        concurrency=CONCURRENCY,
        log_dir=log_dir or work / "logs",
    )
    with system:
        job_id = jobsys.submit("bench.cancel_latency:timed_echo", items, name="cancel bench").id

        def progressed() -> bool:
            system.check_alive()
            return jobsys.get_job(job_id).done >= cancel_after_done

        _wait(progressed, timeout=300)
        called = time.time()
        result = jobsys.cancel(job_id)
        returned = time.time()
        at_revoke = jobsys.get_job(job_id)
        time.sleep(SETTLE_S)
        after = jobsys.get_job(job_id)
    with connection() as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(finished_at))::float8 AS last "
            "FROM job_tasks WHERE job_id = %s AND status IN ('done', 'failed')",
            (job_id,),
        ).fetchone()
        late = conn.execute(
            "SELECT count(*) AS batches, coalesce(sum((detail->>'count')::int), 0) AS tasks "
            "FROM job_events WHERE job_id = %s AND event = 'late_results'",
            (job_id,),
        ).fetchone()
        phases = {
            r["event"]: r["at"]
            for r in conn.execute(
                "SELECT CASE WHEN event = 'status' THEN detail->>'to' ELSE event END AS event, "
                "extract(epoch FROM at)::float8 AS at FROM job_events WHERE job_id = %s",
                (job_id,),
            ).fetchall()
        }
    assert row is not None and late is not None
    # `at` is the writing transaction's start: canceling = the guarded write;
    # tasks_cancelled = the revoke transaction, which starts once the stream
    # delete returned.
    deleted = phases.get("tasks_cancelled", returned)
    starts, ends = _read_log(timelog)
    started_after = [s - returned for s in starts if s > returned]
    ended_after = [e - returned for e in ends if e > returned]
    return {
        "job_id": job_id,
        "status": after.status,
        "changed": result.changed,
        "cancel_call_s": returned - called,
        "last_recorded_after_cancel_s": (row["last"] or called) - returned,
        "started_during_cancel_call": sum(1 for s in starts if called < s <= returned),
        "stream_delete_s": deleted - phases.get("canceling", called),
        "revoke_s": returned - deleted,
        "started_after_stream_deleted": sum(1 for s in starts if s > deleted),
        "latest_start_after_stream_deleted_s": max(
            (s - deleted for s in starts if s > deleted), default=0.0
        ),
        "latest_start_after_cancel_called_s": max(
            (s - called for s in starts if s > called), default=0.0
        ),
        "last_end_after_stream_deleted_s": max((e - deleted for e in ends), default=0.0),
        "started_after_cancel": len(started_after),
        "latest_start_after_cancel_s": max(started_after, default=0.0),
        "last_end_after_cancel_s": max(ended_after, default=0.0),
        "ran_total": len(starts),
        "done_at_cancel": at_revoke.done,
        "cancelled": at_revoke.cancelled,
        "late_batches": late["batches"],
        "late_tasks": late["tasks"],
        "counters_moved_after_revoke": after.model_dump() != at_revoke.model_dump(),
        # Pipelines that ran but whose result neither counted nor came back late.
        "results_unaccounted": len(ends) - at_revoke.done - at_revoke.failed - late["tasks"],
    }


def measure_big(tasks: int) -> dict[str, Any]:
    """A started job of `tasks` pending tasks (no processor runs it) cancelled by the
    CLI: how long the command took, how long until `revoked`, and the most tasks
    one transaction cancelled (rows one transaction changed share its xmin)."""
    import jobsys
    from jobsys.api.items import counted_items
    from jobsys.ops.runner import LocalSystem
    from jobsys.pg.db import connection

    work = Path(tempfile.mkdtemp(prefix="jobsys-bigcancel-"))
    with LocalSystem(workers=1, processors=0, log_dir=work / "logs") as system:
        job_id = jobsys.submit("echo", counted_items(tasks), name="big cancel bench").id

        def published() -> bool:
            system.check_alive()
            return jobsys.get_job(job_id).published >= tasks

        _wait(published, timeout=900)
        called = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "jobsys.cli", "cancel", str(job_id), "--json"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        returned = time.monotonic()
        said = json.loads(proc.stdout)["status"]
        _wait(lambda: jobsys.get_job(job_id).status == "revoked", timeout=900)
        revoked = time.monotonic()
    with connection() as conn:
        biggest = conn.execute(
            "SELECT max(n) AS n FROM (SELECT count(*) AS n FROM job_tasks"
            " WHERE job_id = %s AND status = 'cancelled' GROUP BY xmin) x",
            (job_id,),
        ).fetchone()
    view = jobsys.get_job(job_id)
    return {
        "cli_s": returned - called,
        "cli_said": said,
        "revoked_s": revoked - called,
        "biggest_txn": biggest["n"] if biggest else 0,
        "exact": view.cancelled == tasks and view.pending == 0,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Bench rows (the environment — database, namespace — is the caller's)."""
    big_tasks = BIG_TASKS_QUICK if quick else BIG_TASKS
    big = measure_big(big_tasks)
    trials = [measure(cancel_after_done=1_000 if quick else CANCEL_AFTER_DONE)]
    if not quick:
        trials += [measure(cancel_after_done=n) for n in (4_000, 8_000)]
    tag = f"{TASKS:,} x {SLEEP_MS} ms tasks, {PROCESSORS} processors x {CONCURRENCY}"
    target = f"< {TARGET_S}"

    def worst(key: str) -> Any:
        value = max(t[key] for t in trials)
        return round(value, 3) if isinstance(value, float) else value

    revoked = all(t["status"] == "revoked" and not t["counters_moved_after_revoke"] for t in trials)
    return [
        _row(f"trials ({tag})", len(trials)),
        _row("cancel call (max)", worst("cancel_call_s"), "s"),
        _row("stream delete inside cancel (max)", worst("stream_delete_s"), "s"),
        _row("revoke (cancel pending tasks) inside cancel (max)", worst("revoke_s"), "s"),
        _row("last result recorded after cancel returned (max)",
             worst("last_recorded_after_cancel_s"), "s", target),
        _row("tasks started after cancel returned (max)", worst("started_after_cancel"), "tasks"),
        _row("latest task start after cancel returned (max)",
             worst("latest_start_after_cancel_s"), "s", target),
        _row("latest task start after cancel called (max)",
             worst("latest_start_after_cancel_called_s"), "s", target),
        _row("tasks started after the stream was deleted (max)",
             worst("started_after_stream_deleted"), "tasks"),
        _row("latest task start after the stream was deleted (max)",
             worst("latest_start_after_stream_deleted_s"), "s", target),
        _row("last task end after cancel returned (max)",
             worst("last_end_after_cancel_s"), "s", target),
        _row("late result tasks, acked not counted (max)", worst("late_tasks"), "tasks"),
        _row("results neither counted nor reported late (max)",
             worst("results_unaccounted"), "tasks", "0"),
        _row("ended revoked, no counter moved after revoke", revoked, "", "True"),
        _row(f"`jobsys cancel` of a {big_tasks:,}-task job: command returned",
             round(big["cli_s"], 3), "s", "<= 1 (incl. interpreter start)"),
        _row("  ... status the command printed", big["cli_said"]),
        _row("  ... from the command to revoked", round(big["revoked_s"], 2), "s"),
        _row("  ... most tasks cancelled by one transaction", big["biggest_txn"], "tasks",
             "<= JOBSYS_CANCEL_CHUNK_ROWS"),
        _row("  ... counts exact (all cancelled, none pending)", big["exact"], "", "True"),
    ]  # fmt: skip


def _row(metric: str, value: Any, unit: str = "", target: str = "") -> dict[str, Any]:
    return {"benchmark": "cancel latency", "metric": metric, "value": value, "unit": unit,
            "target": target}  # fmt: skip


@contextlib.contextmanager
def _isolated() -> Iterator[None]:
    """Own database, NATS namespace and Redis namespace for a standalone run."""
    import asyncio

    import psycopg
    import redis
    from psycopg.conninfo import make_conninfo

    from jobsys.settings import Settings, get_settings, reset_settings

    base = Settings()
    run_id = uuid.uuid4().hex[:8]
    db = f"jobsys_bench_cancel_{run_id}"
    admin_url = make_conninfo(base.database_url, dbname="postgres")
    os.environ.update(
        {
            "JOBSYS_NAMESPACE": f"bc{run_id}",
            "JOBSYS_DATABASE_URL": make_conninfo(base.database_url, dbname=db),
            "JOBSYS_REDIS_URL": base.redis_url,
            "JOBSYS_NATS_URL": base.nats_url,
            "JOBSYS_LOG_LEVEL": os.environ.get("JOBSYS_LOG_LEVEL", "WARNING"),
        }
    )
    reset_settings()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        from jobsys.pg.migrate import migrate

        migrate()
        yield
    finally:
        from jobsys.nats.admin import delete_streams, namespace_stream
        from jobsys.nats.bridge import close_bridge
        from jobsys.nats.connect import connect, jetstream
        from jobsys.pg.db import close_pool

        settings = get_settings()

        async def wipe() -> None:
            nc = await connect()
            await delete_streams(jetstream(nc), namespace_stream(settings.namespace))
            await nc.close()

        with contextlib.suppress(Exception):
            asyncio.run(wipe())
        client = redis.Redis.from_url(settings.redis_url)
        keys = list(client.scan_iter(f"{settings.dramatiq_namespace}*"))
        if keys:
            client.delete(*keys)
        client.close()
        close_bridge()
        close_pool()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def main() -> None:
    """Run alone and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one trial instead of three")
    args = parser.parse_args()
    with _isolated():
        rows = run(args.quick)
    width = max(len(r["metric"]) for r in rows)
    print(f"{'metric':<{width}}  {'value':>10}  unit   target")
    for r in rows:
        print(f"{r['metric']:<{width}}  {r['value']!s:>10}  {r['unit']:<5}  {r['target']}")


if __name__ == "__main__":
    main()

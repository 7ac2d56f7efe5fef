"""Counting strategies under concurrent result handlers (table 1).

The same stream of result batches is applied by 1, 4, 16 and 32 handler
threads (each its own Postgres connection) to one fresh job per cell:

- A: the seed system's way: read the job's JSON progress blob, add in Python,
  write the whole blob back, no lock (the per-task results are inserted too,
  as the seed's handler saved them);
- B: the same under ``SELECT ... FOR UPDATE``;
- C: jobsys's ledger + counter columns via the real `jobsys.recording.counting.record_results`;
- D (alternative, bench only): C's ledger move, but the counts go to one of
  16 shard rows (summed on read) instead of the hot job row.

A, B and D run in a temporary database created and dropped here.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from bench.env import BENCH_URL, scratch_database
from bench.jobrows import job_row

HANDLERS = (1, 4, 16, 32)
BATCH_SIZES = (1, 100)
SHARDS = 16
# The target cells are measured this many times (best counts: noise only slows).
KEY_REPEATS = 3
# The last run's raw cells, for the pivot table and the JSON file.
LAST: dict[str, list[dict]] = {}

_SEED_SCHEMA = """
CREATE TABLE seed_jobs (id serial PRIMARY KEY, status text NOT NULL, progress jsonb NOT NULL);
CREATE TABLE seed_results (job_id int NOT NULL, task_no int NOT NULL, result jsonb);
CREATE TABLE shard_tasks (
    job_id bigint NOT NULL, task_no int NOT NULL, status text NOT NULL DEFAULT 'pending',
    result json, PRIMARY KEY (job_id, task_no)) WITH (fillfactor = 80);
CREATE TABLE shard_counts (
    job_id bigint NOT NULL, shard int NOT NULL, done_count bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, shard));
"""

# The blob the seed system kept on its job row: stages with counts and percentages.
_BLOB = {
    "status": "STARTED",
    "stages": [
        {"key": "process", "processed": 0, "failed": 0, "remaining": 0, "progress": 0.0},
        {"key": "results", "processed": 0, "failed": 0, "remaining": 0, "progress": 0.0},
    ],
}

_SHARD_MOVE = """
WITH moved AS (
    UPDATE shard_tasks t SET status = 'done', result = r.result::json
    FROM unnest(%(task_nos)s::int[], %(results)s::text[]) AS r(task_no, result)
    WHERE t.job_id = %(job_id)s AND t.task_no = r.task_no AND t.status = 'pending'
    RETURNING 1
)
UPDATE shard_counts SET done_count = done_count + (SELECT count(*) FROM moved)
WHERE job_id = %(job_id)s AND shard = %(shard)s
"""

Batch = list[tuple[int, str]]


def _scalar(conn: Any, sql: str, params: tuple[Any, ...]) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def _batches(total: int, size: int) -> list[Batch]:
    return [
        [(t, json.dumps({"n": t})) for t in range(start, min(start + size, total))]
        for start in range(0, total, size)
    ]


def _drive(
    url: str, handlers: int, batches: list[Batch], apply: Callable[[Any, Batch, int], None]
) -> float:
    """Apply every batch with `handlers` threads; seconds from the common start to the end."""
    work: queue.Queue[Batch] = queue.Queue()
    for b in batches:
        work.put(b)
    barrier = threading.Barrier(handlers + 1)
    errors: list[BaseException] = []

    def handler(idx: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            barrier.wait()
            while True:
                try:
                    batch = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    apply(conn, batch, idx)
                except BaseException as exc:
                    errors.append(exc)
                    return

    threads = [threading.Thread(target=handler, args=(i,)) for i in range(handlers)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def _seed_apply(locked: bool, job_id: int) -> Callable[[Any, Batch, int], None]:
    select = "SELECT progress FROM seed_jobs WHERE id = %s" + (" FOR UPDATE" if locked else "")

    def apply(conn: Any, batch: Batch, _idx: int) -> None:
        with conn.transaction():
            row = conn.execute(select, (job_id,)).fetchone()
            progress = row[0]
            conn.execute(
                "INSERT INTO seed_results (job_id, task_no, result) "
                "SELECT %s, t, r::jsonb FROM unnest(%s::int[], %s::text[]) AS x(t, r)",
                (job_id, [t for t, _ in batch], [r for _, r in batch]),
            )
            stage = progress["stages"][0]
            stage["processed"] += len(batch)
            stage["remaining"] = max(stage["remaining"] - len(batch), 0)
            stage["progress"] = stage["processed"] / max(stage["processed"] + stage["remaining"], 1)
            conn.execute(
                "UPDATE seed_jobs SET progress = %s::jsonb, status = %s WHERE id = %s",
                (json.dumps(progress), progress["status"], job_id),
            )

    return apply


def _seed_cell(url: str, locked: bool, handlers: int, batches: list[Batch], total: int) -> dict:
    blob = json.loads(json.dumps(_BLOB))
    blob["stages"][0]["remaining"] = total
    with psycopg.connect(url, autocommit=True) as conn:
        job_id = _scalar(
            conn,
            "INSERT INTO seed_jobs (status, progress) VALUES ('STARTED', %s::jsonb) RETURNING id",
            (json.dumps(blob),),
        )
    elapsed = _drive(url, handlers, batches, _seed_apply(locked, job_id))
    with psycopg.connect(url, autocommit=True) as conn:
        counted = _scalar(
            conn,
            "SELECT (progress->'stages'->0->>'processed')::int FROM seed_jobs WHERE id = %s",
            (job_id,),
        )
    return {"elapsed": elapsed, "counted": counted}


def _new_ledger_job(total: int) -> int:
    """A queued jobsys job with `total` pending tasks (no bootstrap message is sent)."""
    from jobsys.pg.db import connection
    from jobsys.pg.queries import Q

    with connection() as conn, conn.transaction():
        job = conn.execute(Q.insert_job, job_row("bench-counting", 0)).fetchone()
        assert job is not None
        with conn.cursor().copy(Q.copy_tasks) as copy:
            for t in range(total):
                copy.write_row((job["id"], t, json.dumps({"n": t})))
        conn.execute(Q.set_job_total, {"job_id": job["id"], "total": total})
    return int(job["id"])


def _ledger_cell(handlers: int, batches: list[Batch], total: int) -> dict:
    from psycopg.rows import dict_row

    from jobsys.pg.queries import Q
    from jobsys.recording.counting import record_results

    job_id = _new_ledger_job(total)

    def apply(conn: Any, batch: Batch, _idx: int) -> None:
        conn.row_factory = dict_row
        record_results(conn, job_id, [(t, "done", r, None, 1) for t, r in batch])

    elapsed = _drive(BENCH_URL, handlers, batches, apply)
    with psycopg.connect(BENCH_URL, autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute(Q.get_job, {"job_id": job_id}).fetchone()
    assert row is not None
    return {"elapsed": elapsed, "counted": row["done_count"], "status": row["status"]}


def _shard_cell(url: str, handlers: int, batches: list[Batch], total: int, job_id: int) -> dict:
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        with conn.cursor().copy("COPY shard_tasks (job_id, task_no) FROM STDIN") as copy:
            for t in range(total):
                copy.write_row((job_id, t))
        conn.execute(
            "INSERT INTO shard_counts (job_id, shard) SELECT %s, s FROM generate_series(0, %s) s",
            (job_id, SHARDS - 1),
        )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE shard_tasks")

    def apply(conn: Any, batch: Batch, idx: int) -> None:
        conn.execute(
            _SHARD_MOVE,
            {
                "job_id": job_id,
                "task_nos": [t for t, _ in batch],
                "results": [r for _, r in batch],
                "shard": idx % SHARDS,
            },
        )

    elapsed = _drive(url, handlers, batches, apply)
    with psycopg.connect(url, autocommit=True) as conn:
        counted = _scalar(
            conn, "SELECT sum(done_count)::int FROM shard_counts WHERE job_id = %s", (job_id,)
        )
    return {"elapsed": elapsed, "counted": counted}


def _cell(url: str, strategy: str, handlers: int, size: int, total: int, seq: list[int]) -> dict:
    batches = _batches(total, size)
    if strategy == "A":
        m = _seed_cell(url, False, handlers, batches, total)
    elif strategy == "B":
        m = _seed_cell(url, True, handlers, batches, total)
    elif strategy == "C":
        m = _ledger_cell(handlers, batches, total)
    else:
        seq[0] += 1
        m = _shard_cell(url, handlers, batches, total, seq[0])
    return {
        "strategy": strategy,
        "handlers": handlers,
        "batch": size,
        "total": total,
        "rate": total / m["elapsed"],
        "lost": total - m["counted"],
        **m,
    }


def results_for(quick: bool) -> tuple[list[dict], list[dict]]:
    """(table-1 cells, extra cells): the grid, then repeats of the target cells
    (B, C, D at 16 handlers, batch 100) and the larger-batch alternative."""
    cells: list[dict] = []
    extra: list[dict] = []
    sizes = {1: 300 if quick else 1_500, 100: 10_000 if quick else 50_000}
    seq = [0]
    with scratch_database("jobsys_bench_seed") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(_SEED_SCHEMA)
        for size in BATCH_SIZES:
            for handlers in HANDLERS:
                for strategy in ("A", "B", "C", "D"):
                    cells.append(_cell(url, strategy, handlers, size, sizes[size], seq))
        for _ in range(KEY_REPEATS - 1):
            for strategy in ("B", "C", "D"):
                extra.append(_cell(url, strategy, 16, 100, sizes[100], seq))
        for strategy in ("B", "C", "D"):
            extra.append(_cell(url, strategy, 16, 500, sizes[100], seq))
    return cells, extra


def print_pivot(cells: list[dict], title: str) -> None:
    """Table 1 as a grid: one line per (batch, handlers), results/s and lost per strategy."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("batch", justify="right")
    table.add_column("handlers", justify="right")
    strategies = sorted({c["strategy"] for c in cells})
    for s in strategies:
        table.add_column(f"{s} results/s", justify="right")
        table.add_column(f"{s} lost", justify="right")
    keys = sorted({(c["batch"], c["handlers"]) for c in cells})
    by = {(c["strategy"], c["batch"], c["handlers"]): c for c in cells}
    for batch, handlers in keys:
        line = [str(batch), str(handlers)]
        for s in strategies:
            c = by.get((s, batch, handlers))
            line += [f"{c['rate']:,.0f}", f"{c['lost']:,}"] if c else ["", ""]
        table.add_row(*line)
    Console(width=160).print(table)


def run(quick: bool) -> list[dict]:
    """Table-1 rows plus the target checks (A loses updates; C loses none and >= 3x B)."""
    cells, extra = results_for(quick)
    LAST["cells"], LAST["extra"] = cells, extra
    rows: list[dict] = []
    for c in cells + extra:
        rows.append(
            {
                "benchmark": f"counting {c['strategy']} h={c['handlers']:>2} batch={c['batch']}",
                "metric": "results/s",
                "value": c["rate"],
                "unit": "/s",
                "target": f"lost updates: {c['lost']:,}",
            }
        )

    def best(strategy: str, batch: int = 100) -> float:
        return max(
            c["rate"]
            for c in cells + extra
            if (c["strategy"], c["handlers"], c["batch"]) == (strategy, 16, batch)
        )

    a_lost = sum(c["lost"] for c in cells if c["strategy"] == "A")
    c_lost = sum(c["lost"] for c in cells + extra if c["strategy"] == "C")
    d_lost = sum(c["lost"] for c in cells + extra if c["strategy"] == "D")
    ratio = best("C") / best("B")
    rows += [
        {"benchmark": "counting A (all cells)", "metric": "lost updates", "value": a_lost,
         "unit": "", "target": "> 0 (shows the race)", "ok": a_lost > 0},
        {"benchmark": "counting C (all cells)", "metric": "lost updates", "value": c_lost,
         "unit": "", "target": "0", "ok": c_lost == 0},
        {"benchmark": "counting D (all cells)", "metric": "lost updates", "value": d_lost,
         "unit": "", "target": "0", "ok": d_lost == 0},
        {"benchmark": "counting C/B h=16 batch=100", "metric": f"best of {KEY_REPEATS}",
         "value": ratio, "unit": "x", "target": ">= 3", "ok": ratio >= 3},
        {"benchmark": "alternative: D/B h=16 batch=100", "metric": "sharded counters",
         "value": best("D") / best("B"), "unit": "x", "target": "(C's target)"},
        {"benchmark": "alternative: C h=16 batch 500 / 100", "metric": "larger batches",
         "value": best("C", 500) / best("C"), "unit": "x", "target": ""},
        {"benchmark": "alternative: C(500)/B(100) h=16", "metric": "larger batches",
         "value": best("C", 500) / best("B"), "unit": "x", "target": "(C's target)"},
    ]  # fmt: skip
    return rows


# -- a short configuration from the command line ------------------------------


def _raw_items(job_id: int, batch: Batch) -> list[dict[str, Any]]:
    """A batch as a processor sends it (plain dicts, real-looking reply subjects)."""
    from jobsys.nats.subjects import JobNames
    from jobsys.settings import get_settings

    names = JobNames.of(get_settings().namespace, job_id)
    ts = time.time_ns()
    return [
        {
            "task": t,
            "status": "done",
            "result": json.loads(r),
            "error": None,
            "reply": f"$JS.ACK.{names.stream}.{names.consumer}.1.{t + 1}.{t + 1}.{ts}.0",
            "deliveries": 1,
        }
        for t, r in batch
    ]


def _apply_cell(handlers: int, batches: list[Batch], total: int) -> dict:
    """The worker's whole result path minus NATS acks: each batch validated from
    plain dicts (as a Dramatiq message brings it), then `jobsys.recording.apply.apply_results`
    (pooled connections, as the worker uses them)."""
    from psycopg.rows import dict_row

    from jobsys.models import ResultBatch
    from jobsys.nats.bridge import lookup_tasks
    from jobsys.pg.queries import Q
    from jobsys.recording.apply import apply_results

    job_id = _new_ledger_job(total)
    with psycopg.connect(BENCH_URL, autocommit=True) as conn:
        # Published as a first fill into a fresh stream would: task n at
        # sequence n + 1, where the replies below point (jobsys.recording checks).
        conn.execute(
            "UPDATE jobs SET status = 'started', published_count = total_count WHERE id = %s",
            (job_id,),
        )
    raw = {id(b): _raw_items(job_id, b) for b in batches}

    def apply(_conn: Any, batch: Batch, _idx: int) -> None:
        batch_in = ResultBatch.model_validate({"job_id": job_id, "results": raw[id(batch)]})
        apply_results(batch_in, lookup_tasks)

    elapsed = _drive(BENCH_URL, handlers, batches, apply)
    with psycopg.connect(BENCH_URL, autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute(Q.get_job, {"job_id": job_id}).fetchone()
    assert row is not None
    return {"elapsed": elapsed, "counted": row["done_count"], "status": row["status"]}


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.counting`: strategy C (record) and the worker's apply path, briefly."""
    import argparse
    import statistics

    from bench import env

    parser = argparse.ArgumentParser(
        prog="python -m bench.counting",
        description="Results/s of jobsys's counting path in a short configuration: "
        "'record' = jobsys.recording.counting.record_results (strategy C of table 1), "
        "'apply' = the worker's path from plain result dicts (validation, storable checks, "
        "record).",
    )
    parser.add_argument("--paths", default="record,apply", help="comma-separated: record,apply")
    parser.add_argument("--handlers", default="1,8", help="comma-separated handler counts")
    parser.add_argument("--batch", type=int, default=100, help="results per batch")
    parser.add_argument("--total", type=int, default=20_000, help="results per cell")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (best is kept)")
    args = parser.parse_args(argv)
    paths = args.paths.split(",")
    unknown = set(paths) - {"record", "apply"}
    if unknown:
        parser.error(f"unknown path(s): {', '.join(sorted(unknown))}")
    env.setup()
    try:
        print(f"{'path':<8}{'handlers':>9}{'batch':>7}{'total':>8}{'best/s':>10}{'median/s':>10}")
        for path in paths:
            for handlers in (int(h) for h in args.handlers.split(",")):
                rates = []
                for _ in range(args.repeats):
                    batches = _batches(args.total, args.batch)
                    cell = (_ledger_cell if path == "record" else _apply_cell)(
                        handlers, batches, args.total
                    )
                    if cell["counted"] != args.total:
                        raise SystemExit(f"{path}: counted {cell['counted']} of {args.total}")
                    rates.append(args.total / cell["elapsed"])
                print(
                    f"{path:<8}{handlers:>9}{args.batch:>7}{args.total:>8}"
                    f"{max(rates):>10,.0f}{statistics.median(rates):>10,.0f}"
                )
    finally:
        env.teardown()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())

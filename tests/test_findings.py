"""The reconciler's history stays bounded: a finding repeated pass after pass is
one row with a count, and history older than the window is pruned; against
real Postgres and NATS (no worker runs here)."""

from __future__ import annotations

import time
from dataclasses import asdict, fields
from typing import Any

import jobsys
from jobsys.pg.db import connection
from jobsys.pg.queries import Q
from jobsys.reconciler import reconcile_pass
from jobsys.reconciler.findings import Finding, record_findings
from jobsys.reconciler.kinds import Action, Kind
from jobsys.reconciler.state import Counts, NatsView
from tests.helpers import fast, make_started_job, pull_results


def findings_of(job_id: int) -> list[dict[str, Any]]:
    with connection() as conn:
        rows = conn.execute(
            "SELECT * FROM reconcile_findings WHERE job_id = %s ORDER BY id", (job_id,)
        ).fetchall()
    return [dict(r) for r in rows]


NO_PROCESSOR = {
    "no processor is consuming",
    "no processor is running",
    "no processor or worker is running",
}


def test_a_job_waiting_pass_after_pass_has_one_finding_row_with_a_count() -> None:
    job_id = make_started_job(2)  # no processor consumes: every pass says it waits
    time.sleep(0.3)

    for _ in range(5):
        reconcile_pass(fast())

    rows = findings_of(job_id)
    assert len(rows) == 1, [(r["kind"], r["action"]) for r in rows]
    (row,) = rows
    assert (row["kind"], row["action"], row["seen"]) == ("waiting", "none", 5)
    # Which, depends on the members other tests left announced (a killed one
    # counts as alive for 20 s): never that something holds messages.
    assert row["reason"] in NO_PROCESSOR
    assert row["first_at"] < row["at"]

    # Another reason is another row; the same one again counts on the newest row.
    held = pull_results(job_id, 2)
    assert len(held) == 2
    reconcile_pass(fast())
    reconcile_pass(fast())
    rows = findings_of(job_id)
    assert [(r["reason"], r["seen"]) for r in rows] == [
        (row["reason"], 5),
        ("processors hold messages: running, or results not yet recorded", 2),
    ]

    # The dashboards show the latest finding (by when it was last seen) and its count.
    with connection() as conn, conn.transaction():
        conn.execute("SET LOCAL jobsys.stuck_after = '0.1 s'")
        stuck = conn.execute(
            "SELECT finding, finding_action, finding_seen FROM stuck_jobs WHERE id = %s",
            (job_id,),
        ).fetchone()
        recent = conn.execute(
            "SELECT kind, seen FROM reconcile_findings_recent WHERE job_id = %s ORDER BY id",
            (job_id,),
        ).fetchall()
    assert stuck is not None and dict(stuck) == {
        "finding": "waiting", "finding_action": "none", "finding_seen": 2,
    }  # fmt: skip
    assert [(r["kind"], r["seen"]) for r in recent] == [("waiting", 5), ("waiting", 2)]
    jobsys.cancel(job_id)


def test_a_pass_prunes_findings_and_passes_last_seen_before_the_window() -> None:
    with connection() as conn, conn.transaction():
        old_run, recent_run = (
            conn.execute(
                "INSERT INTO reconcile_runs (started_at, finished_at, findings) "
                "VALUES (now() - %s::interval, now() - %s::interval, 1) RETURNING id",
                (age, age),
            ).fetchone()["id"]
            for age in ("8 days", "1 hour")
        )
        old, still_seen = (
            conn.execute(
                "INSERT INTO reconcile_findings (run_id, job_id, kind, action, first_at, at) "
                "VALUES (%s, -1, 'waiting', 'none', now() - interval '8 days', "
                "now() - %s::interval) RETURNING id",
                (run, last_seen),
            ).fetchone()["id"]
            for run, last_seen in ((old_run, "8 days"), (recent_run, "1 hour"))
        )

    run_id = reconcile_pass(fast(history_days=7)).run_id

    with connection() as conn:
        runs = {r["id"] for r in conn.execute(
            "SELECT id FROM reconcile_runs WHERE id = ANY(%s)", ([old_run, recent_run, run_id],)
        ).fetchall()}  # fmt: skip
        findings = {r["id"] for r in conn.execute(
            "SELECT id FROM reconcile_findings WHERE id = ANY(%s)", ([old, still_seen],)
        ).fetchall()}  # fmt: skip
        conn.execute("DELETE FROM reconcile_findings WHERE job_id = -1")
    # A finding first seen long ago but seen within the window is kept.
    assert findings == {still_seen}
    assert runs == {recent_run, run_id}


def test_findings_recorded_together_are_counted_or_added_as_one_by_one() -> None:
    with connection() as conn:
        run_id = conn.execute(Q.insert_reconcile_run, {"trigger": "test"}).fetchone()["id"]
    same, other, new = -11, -12, -13
    for job_id in (same, other):
        record_findings(run_id, [Finding(job_id, Kind.WAITING, Action.NONE, {"reason": "a"})])

    record_findings(run_id, [
        Finding(same, Kind.WAITING, Action.NONE, {"reason": "a", "n": 2}),
        Finding(other, Kind.WAITING, Action.NONE, {"reason": "b"}),
        Finding(new, Kind.WAITING, Action.NONE, {"reason": "a"}),
    ])  # fmt: skip

    rows = {j: [(r["reason"], r["seen"], r["detail"]) for r in findings_of(j)]
            for j in (same, other, new)}  # fmt: skip
    with connection() as conn:
        conn.execute("DELETE FROM reconcile_findings WHERE job_id = ANY(%s)", ([same, other, new],))
    assert rows == {
        same: [("a", 2, {"reason": "a", "n": 2})],  # counted, with the detail seen now
        other: [("a", 1, {"reason": "a"}), ("b", 1, {"reason": "b"})],
        new: [("a", 1, {"reason": "a"})],
    }


def test_what_a_finding_records_as_seen_names_every_field() -> None:
    # Built by hand for speed (a pass builds one per waiting job): the same as asdict.
    view = NatsView(stream=True, consumer=True, messages=2, num_pending=1, num_ack_pending=1,
                    num_redelivered=0, num_waiting=0, advisories=None)  # fmt: skip
    assert view.as_dict() == {**asdict(view), "created": None}
    assert list(view.as_dict()) == [f.name for f in fields(NatsView)]
    counts = Counts(1, 2, 3, 4)
    assert counts.as_dict() == asdict(counts)

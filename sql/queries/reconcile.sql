-- The reconciler's queries (jobsys/reconciler.py), by name.
-- Plain SQL over the counters and the ledger; no job is ever loaded and saved back.

-- name: reconcile_jobs
-- Every active job with its counters, the ledger's own counts, how long
-- nothing has happened, and how long the job has been canceling. One pass
-- reads every active job with this one query.
SELECT * FROM job_reconcile_state ORDER BY id;

-- name: reconcile_job
-- The same for one active job (looked at again under its lock).
SELECT * FROM job_reconcile_state WHERE id = %(job_id)s;

-- name: lock_job_row
-- Take the job row's lock (first statement of a counter repair) and read its counters.
SELECT id, status, done_count, failed_count, lost_count, cancelled_count
FROM jobs WHERE id = %(job_id)s
FOR UPDATE;

-- name: repair_counters
-- Set the counter columns to the ledger's counts. Run after lock_job_row in
-- the same transaction: this statement's snapshot is taken after the lock
-- is held (READ COMMITTED), so every batch that already added to the
-- counters is in the count, and every batch still open adds its share on
-- top of the repaired values once we commit. Returns nothing when the
-- counters already agree.
WITH led AS (
    SELECT count(*) FILTER (WHERE status = 'done')      AS done,
           count(*) FILTER (WHERE status = 'failed')    AS failed,
           count(*) FILTER (WHERE status = 'lost')      AS lost,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled
    FROM job_tasks WHERE job_id = %(job_id)s
)
UPDATE jobs j
SET done_count = led.done, failed_count = led.failed, lost_count = led.lost,
    cancelled_count = led.cancelled
FROM led
WHERE j.id = %(job_id)s
  AND (j.done_count, j.failed_count, j.lost_count, j.cancelled_count)
      IS DISTINCT FROM (led.done::int, led.failed::int, led.lost::int, led.cancelled::int)
RETURNING j.status, j.total_count, j.done_count, j.failed_count, j.lost_count,
          j.cancelled_count;

-- name: mark_tasks_lost
-- Move pending tasks to 'lost' (only the given task numbers, or every
-- pending task when %(task_nos)s is NULL) and add exactly the moved count to
-- lost_count. Tasks are locked in task order, then the job row, the same
-- order as record_results, so this and a result batch never deadlock; the
-- status = 'pending' guard means a task a late result already moved is not
-- moved (nor counted) again, and vice versa.
WITH locked AS (
    SELECT task_no FROM job_tasks
    WHERE job_id = %(job_id)s AND status = 'pending'
      AND (%(task_nos)s::int[] IS NULL OR task_no = ANY(%(task_nos)s::int[]))
      -- Only a job that can still finish by counting (a canceling job's
      -- pending tasks become 'cancelled' at revoke, not 'lost').
      AND EXISTS (SELECT 1 FROM jobs WHERE id = %(job_id)s AND status IN ('queued', 'started'))
    ORDER BY task_no
    FOR UPDATE
), moved AS (
    UPDATE job_tasks t SET status = 'lost', error = %(reason)s, finished_at = now()
    FROM locked l
    WHERE t.job_id = %(job_id)s AND t.task_no = l.task_no AND t.status = 'pending'
    RETURNING t.task_no
), counts AS (
    SELECT count(*) AS n FROM moved
)
UPDATE jobs j SET lost_count = j.lost_count + c.n, progress_at = now()
FROM counts c
WHERE j.id = %(job_id)s AND c.n > 0
RETURNING c.n AS moved, j.status, j.total_count, j.done_count, j.failed_count, j.lost_count;

-- name: touch_progress
-- Note that the reconciler just acted for an idle job (re-enqueued its
-- bootstrap), so the next pass waits another idle period before doing it again.
UPDATE jobs SET progress_at = now() WHERE id = %(job_id)s AND status = ANY(%(from)s::text[]);

-- name: pending_tasks_to_republish
-- Pending tasks among those bootstrap already published, in task order, from a task number on.
SELECT t.task_no, t.payload::text
FROM job_tasks t JOIN jobs j ON j.id = t.job_id
WHERE t.job_id = %(job_id)s AND t.status = 'pending'
  AND t.task_no >= %(from_task)s AND t.task_no < j.published_count
ORDER BY t.task_no
LIMIT %(limit)s;

-- name: insert_reconcile_run
-- Start recording one reconciler pass.
INSERT INTO reconcile_runs (trigger) VALUES (%(trigger)s) RETURNING id, started_at;

-- name: insert_reconcile_finding
-- One finding of a pass: what was wrong with a job, what the pass saw and did.
INSERT INTO reconcile_findings (run_id, job_id, kind, action, detail)
VALUES (%(run_id)s, %(job_id)s, %(kind)s, %(action)s, %(detail)s::jsonb);

-- name: finish_reconcile_run
-- Close a pass's record with what it checked and found.
UPDATE reconcile_runs
SET finished_at = now(), jobs_checked = %(jobs_checked)s, findings = %(findings)s,
    detail = %(detail)s::jsonb
WHERE id = %(run_id)s;

-- name: job_findings
-- The reconciler's latest findings about one job, newest first.
SELECT f.id, f.run_id, f.at, f.kind, f.action, f.detail
FROM reconcile_findings f
WHERE f.job_id = %(job_id)s
ORDER BY f.id DESC
LIMIT %(limit)s;

-- name: prune_job_minutes
-- Rate rollups older than the history window (dashboards read the last hour).
DELETE FROM job_minutes WHERE minute < now() - make_interval(secs => %(keep_s)s);

-- name: prune_quiet_runs
-- Pass records that found nothing, older than the history window. Passes with
-- findings are kept: they are the reconciler's word on a job.
DELETE FROM reconcile_runs
WHERE findings = 0 AND finished_at IS NOT NULL
  AND started_at < now() - make_interval(secs => %(keep_s)s);

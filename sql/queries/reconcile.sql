-- The reconciler's queries (jobsys/reconciler/), by name.
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
-- moved (nor counted) again, and vice versa. %(deliveries)s (NULL, or one
-- per task number) is how many times NATS delivered each task (from its
-- MAX_DELIVERIES advisory): the ledger keeps the larger of it and what it had.
WITH given AS (
    SELECT g.task_no, max(g.deliveries) AS deliveries
    FROM unnest(%(task_nos)s::int[], %(deliveries)s::int[]) AS g(task_no, deliveries)
    GROUP BY g.task_no
), locked AS (
    SELECT task_no FROM job_tasks
    WHERE job_id = %(job_id)s AND status = 'pending'
      AND (%(task_nos)s::int[] IS NULL OR task_no = ANY(%(task_nos)s::int[]))
      -- Only a job that can still finish by counting (a canceling job's
      -- pending tasks become 'cancelled' at revoke, not 'lost').
      AND EXISTS (SELECT 1 FROM jobs WHERE id = %(job_id)s AND status IN ('queued', 'started'))
    ORDER BY task_no
    FOR UPDATE
), moved AS (
    UPDATE job_tasks t SET status = 'lost', error = %(reason)s, finished_at = now(),
        deliveries = greatest(t.deliveries, coalesce(g.deliveries, 0))
    FROM locked l LEFT JOIN given g ON g.task_no = l.task_no
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

-- name: insert_reconcile_run
-- Start recording one reconciler pass.
INSERT INTO reconcile_runs (trigger) VALUES (%(trigger)s) RETURNING id, started_at;

-- name: latest_findings
-- The latest finding of each kind of each of these jobs (the findings index
-- is (job_id, id DESC)): a pass writes a finding only when it differs.
SELECT DISTINCT ON (job_id, kind) id, job_id, kind, action, reason
FROM reconcile_findings
WHERE job_id = ANY(%(job_ids)s)
ORDER BY job_id, kind, id DESC;

-- name: refresh_findings
-- Findings a pass saw again unchanged: counted (seen + 1, last seen now, this
-- pass) in one statement for the whole pass; their detail stays as first
-- recorded with that reason.
UPDATE reconcile_findings
SET seen = seen + 1, at = now(), run_id = %(run_id)s
WHERE id = ANY(%(ids)s);

-- name: record_reconcile_finding
-- One finding of a pass. If the job's latest finding of this kind has the
-- same action and reason, it is counted on that row (seen + 1, last seen
-- now, this pass, the detail seen now) instead of adding a row: a job that
-- waits for hours is one row, not one per pass. A job is reconciled under
-- its lock, so no two passes record findings of one job at once.
WITH latest AS (
    SELECT id, action, reason FROM reconcile_findings
    WHERE job_id = %(job_id)s AND kind = %(kind)s
    ORDER BY id DESC
    LIMIT 1
), counted AS (
    UPDATE reconcile_findings f
    SET seen = f.seen + 1, at = now(), run_id = %(run_id)s, detail = %(detail)s::jsonb
    FROM latest l
    WHERE f.id = l.id AND l.action = %(action)s
      AND l.reason IS NOT DISTINCT FROM %(reason)s::text
    RETURNING f.id, f.seen
), added AS (
    INSERT INTO reconcile_findings (run_id, job_id, kind, action, reason, detail)
    SELECT %(run_id)s, %(job_id)s, %(kind)s, %(action)s, %(reason)s::text, %(detail)s::jsonb
    WHERE NOT EXISTS (SELECT 1 FROM counted)
    RETURNING id, seen
)
SELECT id, seen FROM counted UNION ALL SELECT id, seen FROM added;

-- name: record_reconcile_findings
-- Many findings of a pass in one statement (a pass's findings that act on
-- nothing: the first pass over 10,000 waiting jobs records 10,000): each
-- exactly as record_reconcile_finding would, counted on the job's latest
-- finding of its kind when action and reason are the same, else added.
-- `findings` is a JSON array of {job_id, kind, action, reason, detail}, one
-- per (job, kind).
WITH new AS (
    SELECT * FROM jsonb_to_recordset(%(findings)s::jsonb)
        AS n (job_id bigint, kind text, action text, reason text, detail jsonb)
), latest AS (
    SELECT DISTINCT ON (f.job_id, f.kind) f.id, f.job_id, f.kind, f.action, f.reason
    FROM reconcile_findings f
    JOIN new n ON f.job_id = n.job_id AND f.kind = n.kind
    ORDER BY f.job_id, f.kind, f.id DESC
), counted AS (
    UPDATE reconcile_findings f
    SET seen = f.seen + 1, at = now(), run_id = %(run_id)s, detail = n.detail
    FROM latest l
    JOIN new n ON n.job_id = l.job_id AND n.kind = l.kind
    WHERE f.id = l.id AND l.action = n.action AND l.reason IS NOT DISTINCT FROM n.reason
    RETURNING f.job_id, f.kind, f.seen
), added AS (
    INSERT INTO reconcile_findings (run_id, job_id, kind, action, reason, detail)
    SELECT %(run_id)s, n.job_id, n.kind, n.action, n.reason, n.detail
    FROM new n
    WHERE NOT EXISTS (SELECT 1 FROM counted c WHERE c.job_id = n.job_id AND c.kind = n.kind)
    RETURNING job_id, kind, seen
)
SELECT job_id, kind, seen FROM counted UNION ALL SELECT job_id, kind, seen FROM added;

-- name: finish_reconcile_run
-- Close a pass's record with what it checked and found.
UPDATE reconcile_runs
SET finished_at = now(), jobs_checked = %(jobs_checked)s, findings = %(findings)s,
    detail = %(detail)s::jsonb
WHERE id = %(run_id)s;

-- name: job_findings
-- The reconciler's latest findings about one job, last seen first.
SELECT f.id, f.run_id, f.at, f.first_at, f.seen, f.kind, f.action, f.detail
FROM reconcile_findings f
WHERE f.job_id = %(job_id)s
ORDER BY f.at DESC, f.id DESC
LIMIT %(limit)s;

-- name: prune_job_minutes
-- Rate rollups older than the history window (dashboards read the last
-- hour), oldest first, at most %(limit)s per pass.
DELETE FROM job_minutes
WHERE (job_id, minute) IN (
    SELECT job_id, minute FROM job_minutes
    WHERE minute < now() - make_interval(secs => %(keep_s)s)
    ORDER BY minute
    LIMIT %(limit)s
);

-- name: prune_findings
-- Findings last seen before the history window, oldest first, at most
-- %(limit)s per pass (a long backlog is worked off over several passes).
-- A finding seen again and again stays: its `at` is its last sighting.
DELETE FROM reconcile_findings
WHERE id IN (
    SELECT id FROM reconcile_findings
    WHERE at < now() - make_interval(secs => %(keep_s)s)
    ORDER BY at
    LIMIT %(limit)s
);

-- name: prune_runs
-- Pass records older than the history window, at most %(limit)s per pass.
-- Findings a later pass saw again point at that pass, so only findings
-- already past the window go with them (ON DELETE CASCADE).
DELETE FROM reconcile_runs
WHERE id IN (
    SELECT id FROM reconcile_runs
    WHERE started_at < now() - make_interval(secs => %(keep_s)s)
    ORDER BY id
    LIMIT %(limit)s
);

-- Retention (jobsys/retention.py), by name. A final job's ledger and events
-- are deleted in short chunks, each its own transaction, touching only that
-- job's rows: nothing a result batch of an active job waits on is locked.

-- name: prunable_jobs
-- Final jobs finished longer ago than %(older_than_s)s whose ledger is not
-- yet pruned (or whose pruning was interrupted), oldest first, after a key.
SELECT id, status, finished_at, total_count, ledger_state
FROM jobs
WHERE ledger_state <> 'pruned' AND status IN ('success', 'failure', 'revoked')
  AND finished_at < now() - make_interval(secs => %(older_than_s)s)
  AND (finished_at, id) > (%(after_at)s::timestamptz, %(after_id)s::bigint)
ORDER BY finished_at, id
LIMIT %(limit)s;

-- name: count_job_events
-- How many events a job has (for a dry run).
SELECT count(*) AS n FROM job_events WHERE job_id = %(job_id)s;

-- name: begin_prune
-- kept|pruning -> pruning, only for a final job still past the cutoff. From
-- here on exports and retries refuse the job. Waits for a retry that is
-- copying this ledger (it holds the row FOR SHARE).
UPDATE jobs SET ledger_state = 'pruning', ledger_pruned_at = coalesce(ledger_pruned_at, now())
WHERE id = %(job_id)s AND ledger_state IN ('kept', 'pruning')
  AND status IN ('success', 'failure', 'revoked')
  AND finished_at < now() - make_interval(secs => %(older_than_s)s)
RETURNING total_count, ledger_pruned_at;

-- name: prune_task_chunk
-- Delete one range of a job's ledger rows. They are locked in task order
-- first, as a result batch locks its tasks (record_results): a late batch of
-- the job then waits for the chunk, or the chunk for it, and neither is ever
-- a deadlock's victim (a plain DELETE may lock in the heap's order).
DELETE FROM job_tasks t USING (
    SELECT task_no FROM job_tasks
    WHERE job_id = %(job_id)s AND task_no >= %(lo)s AND task_no < %(hi)s
    ORDER BY task_no
    FOR UPDATE
) l
WHERE t.job_id = %(job_id)s AND t.task_no = l.task_no;

-- name: prune_task_rest
-- Whatever ledger rows of the job a range did not cover (none, normally).
DELETE FROM job_tasks WHERE job_id = %(job_id)s;

-- name: prune_event_chunk
-- Delete up to %(limit)s of a job's events, oldest first.
DELETE FROM job_events WHERE id IN (
    SELECT id FROM job_events WHERE job_id = %(job_id)s ORDER BY id LIMIT %(limit)s
);

-- name: prune_hook
-- A delivered (or given up) hook's outbox row goes with the ledger; a
-- delivery still pending stays until it is delivered or given up.
DELETE FROM job_hooks WHERE job_id = %(job_id)s AND state IN ('delivered', 'failed');

-- name: finish_prune
-- pruning -> pruned: the job row stays, with its counters.
UPDATE jobs SET ledger_state = 'pruned' WHERE id = %(job_id)s AND ledger_state = 'pruning';

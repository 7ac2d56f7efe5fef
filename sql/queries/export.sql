-- Getting a job's outcomes out (jobsys/export.py, jobsys/tasklist.py), by name.
-- Exports read through a server-side cursor in one REPEATABLE READ snapshot,
-- together with get_job, so the counts written equal the job's counters.
-- result and payload are read as text: the json column keeps the bytes given.

-- name: export_tasks
-- A job's tasks in task order, all or of some statuses.
SELECT task_no, status, result::text, error, deliveries, finished_at, error_type, error_trace,
       origin_task,
       CASE WHEN %(with_payload)s THEN payload::text END AS payload
FROM job_tasks
WHERE job_id = %(job_id)s
  AND (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s::text[]))
ORDER BY task_no;

-- name: chain_jobs
-- A job and every job retried from it, at any depth (its retry tree).
WITH RECURSIVE chain AS (
    SELECT id, parent_id, ledger_state, ledger_pruned_at, 0 AS depth
    FROM jobs WHERE id = %(job_id)s
    UNION ALL
    SELECT j.id, j.parent_id, j.ledger_state, j.ledger_pruned_at, c.depth + 1
    FROM jobs j JOIN chain c ON j.parent_id = c.id
)
SELECT id, parent_id, ledger_state, ledger_pruned_at, depth FROM chain ORDER BY id;

-- name: export_latest
-- For each task of a job, its latest outcome across the job and its retries
-- (%(descendants)s): the task of the newest retry that re-ran the same
-- original task, else the job's own. `task_no` is the original task number
-- (in the chain's first job); `job_id` says whose outcome it is.
SELECT coalesce(p.origin_task, p.task_no) AS task_no,
       coalesce(l.status, p.status) AS status,
       CASE WHEN l.job_id IS NULL THEN p.result::text ELSE l.result::text END AS result,
       CASE WHEN l.job_id IS NULL THEN p.error ELSE l.error END AS error,
       coalesce(l.deliveries, p.deliveries) AS deliveries,
       CASE WHEN l.job_id IS NULL THEN p.finished_at ELSE l.finished_at END AS finished_at,
       CASE WHEN l.job_id IS NULL THEN p.error_type ELSE l.error_type END AS error_type,
       CASE WHEN l.job_id IS NULL THEN p.error_trace ELSE l.error_trace END AS error_trace,
       coalesce(l.job_id, p.job_id) AS job_id,
       CASE WHEN %(with_payload)s THEN p.payload::text END AS payload
FROM job_tasks p
LEFT JOIN LATERAL (
    SELECT c.job_id, c.status, c.result, c.error, c.deliveries, c.finished_at, c.error_type,
           c.error_trace
    FROM job_tasks c
    WHERE c.job_id = ANY(%(descendants)s::bigint[])
      AND c.origin_task = coalesce(p.origin_task, p.task_no)
    ORDER BY c.job_id DESC
    LIMIT 1
) l ON true
WHERE p.job_id = %(job_id)s
  AND (%(statuses)s::text[] IS NULL OR coalesce(l.status, p.status) = ANY(%(statuses)s::text[]))
ORDER BY p.task_no;

-- name: list_tasks
-- Some of a job's tasks of the given statuses, with their errors, in task order.
SELECT task_no, status, error, deliveries, finished_at, origin_task, next_attempt_at,
       last_error, error_type, error_trace
FROM job_tasks
WHERE job_id = %(job_id)s AND status = ANY(%(statuses)s::text[])
ORDER BY task_no
LIMIT %(limit)s;

-- name: task_errors
-- Every error of a job's tasks of the given statuses, with its exception type,
-- counted by distinct (status, type, text): what `jobsys tasks --by-error`
-- groups (jobsys.api.error_groups normalises the text in Python).
SELECT status, error_type, coalesce(error, '') AS error, count(*) AS tasks,
       min(task_no) AS example_task
FROM job_tasks
WHERE job_id = %(job_id)s AND status = ANY(%(statuses)s::text[])
GROUP BY status, error_type, coalesce(error, '');

-- name: note_retries
-- Pending tasks that failed transiently: when NATS delivers them again, how
-- many deliveries they had and why the last one failed (a processor's notes;
-- display only). A task no longer pending, or a note older than one already
-- written (fewer deliveries), changes nothing.
-- The rows, locked first by lock_listed_tasks in the same transaction, are
-- updated by their ctids (`rows`); a task noted twice takes its note of
-- the most deliveries.
WITH notes AS (
    SELECT DISTINCT ON (n.task_no) n.task_no, n.deliveries, n.next_at, n.error
    FROM unnest(%(tasks)s::int[], %(deliveries)s::int[], %(next_at)s::float8[],
                %(errors)s::text[]) AS n(task_no, deliveries, next_at, error)
    ORDER BY n.task_no, n.deliveries DESC
)
UPDATE job_tasks t
SET next_attempt_at = to_timestamp(n.next_at), last_error = n.error,
    deliveries = n.deliveries
FROM notes n
-- `job_id + 0`: not through the key's job_id prefix, which the planner,
-- with no statistics for a new job's rows, would take over the ctids.
WHERE t.ctid = ANY(%(rows)s::text[]::tid[]) AND t.job_id + 0 = %(job_id)s
  AND t.task_no = n.task_no AND t.status = 'pending' AND n.deliveries >= t.deliveries;

-- name: waits_for_retry
-- Whether every pending task of a job waits for its next delivery after a
-- transient failure (and there is one). CASE looks first for a task that
-- does not wait and stops at the first: cheap for a job that is running
-- (scanning for a waiting one first would read all its pending tasks).
SELECT CASE
         WHEN EXISTS (SELECT 1 FROM job_tasks
                      WHERE job_id = %(job_id)s AND status = 'pending'
                        AND (next_attempt_at IS NULL OR next_attempt_at <= now()))
         THEN false
         ELSE EXISTS (SELECT 1 FROM job_tasks
                      WHERE job_id = %(job_id)s AND status = 'pending'
                        AND next_attempt_at > now())
       END AS waits;

-- Getting a job's outcomes out (jobsys/export.py, jobsys/tasklist.py), by name.
-- Exports read through a server-side cursor in one REPEATABLE READ snapshot,
-- together with get_job, so the counts written equal the job's counters.
-- result and payload are read as text: the json column keeps the bytes given.

-- name: export_tasks
-- A job's tasks in task order, all or of some statuses.
SELECT task_no, status, result::text, error, deliveries, finished_at, origin_task,
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
       coalesce(l.job_id, p.job_id) AS job_id,
       CASE WHEN %(with_payload)s THEN p.payload::text END AS payload
FROM job_tasks p
LEFT JOIN LATERAL (
    SELECT c.job_id, c.status, c.result, c.error, c.deliveries, c.finished_at
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
SELECT task_no, status, error, deliveries, finished_at, origin_task
FROM job_tasks
WHERE job_id = %(job_id)s AND status = ANY(%(statuses)s::text[])
ORDER BY task_no
LIMIT %(limit)s;

-- name: group_task_errors
-- A job's tasks of the given statuses grouped by error text: how many, an
-- example task, which statuses; the most frequent first. `groups` is the
-- number of distinct errors (before the limit).
SELECT coalesce(error, '') AS error, count(*) AS tasks, min(task_no) AS example_task,
       array_agg(DISTINCT status ORDER BY status) AS statuses,
       count(*) OVER () AS groups
FROM job_tasks
WHERE job_id = %(job_id)s AND status = ANY(%(statuses)s::text[])
GROUP BY coalesce(error, '')
ORDER BY tasks DESC, error
LIMIT %(limit)s;

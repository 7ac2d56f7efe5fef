-- Retries (jobsys/retry.py), by name: a new child job made of some of a
-- final job's tasks. The parent is only read (a final status is never left).

-- name: lock_retry_parent
-- The parent job, share-locked until the retry commits: retention's move of
-- its ledger to 'pruning' waits for us, so the ledger we copy is whole.
SELECT id, status, ledger_state, ledger_pruned_at, pipeline,
       coalesce(hook_target, on_complete) AS hook_target,
       failed_count, lost_count, cancelled_count
FROM jobs WHERE id = %(job_id)s FOR SHARE;

-- name: insert_retry_job
-- The child job: the parent's pipeline, threshold, deliveries, time limit,
-- in-flight cap, retry delay, share (priority, weight) and hook (as given and
-- as shown), linked to the parent and to the chain's first job.
INSERT INTO jobs (name, pipeline, total_count, failure_threshold, max_deliver, task_timeout_s,
                  max_in_flight, retry_delay_s, retry_delay_max_s, rate_per_s, priority, weight,
                  parent_id, root_id, on_complete, hook_target)
SELECT name, pipeline, 0, failure_threshold, max_deliver, task_timeout_s, max_in_flight,
       retry_delay_s, retry_delay_max_s, rate_per_s, priority, weight, id,
       coalesce(root_id, id), on_complete, coalesce(hook_target, on_complete)
FROM jobs WHERE id = %(parent_id)s
RETURNING id, root_id;

-- name: copy_retry_tasks
-- The parent's tasks of the given statuses (and whose error matches, if
-- given) become the child's tasks 0..n-1 in the parent's task order, with
-- the same payloads and their original task number (in the chain's first
-- job). Returns how many of each status were copied.
WITH src AS (
    SELECT task_no, payload, origin_task, status
    FROM job_tasks
    WHERE job_id = %(parent_id)s AND status = ANY(%(statuses)s::text[])
      AND (%(pattern)s::text IS NULL OR coalesce(error, '') ILIKE %(pattern)s::text)
), ins AS (
    INSERT INTO job_tasks (job_id, task_no, payload, origin_task)
    SELECT %(child_id)s, (row_number() OVER (ORDER BY task_no) - 1)::int, payload,
           coalesce(origin_task, task_no)
    FROM src
)
SELECT status, count(*) AS n FROM src GROUP BY status;

-- name: job_retries
-- The jobs retried directly from a job, oldest first.
SELECT id, status FROM jobs WHERE parent_id = %(job_id)s ORDER BY id;

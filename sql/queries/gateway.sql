-- The task gateway (jobsys/server/gateway.py, jobsys/api/leasing.py): which
-- jobs remote processors may take work from.

-- name: claimable_jobs
-- Started jobs of these pipelines, the highest priority first (docs/processor.md,
-- "How slots are shared"), then the longest waiting for progress (a job
-- nobody served lately comes before one being served).
SELECT id, pipeline, max_deliver, task_timeout_s, priority, weight
FROM jobs
WHERE status = 'started' AND pipeline = ANY(%(pipelines)s::text[])
ORDER BY priority DESC, coalesce(progress_at, started_at) NULLS FIRST, id
LIMIT %(limit)s;

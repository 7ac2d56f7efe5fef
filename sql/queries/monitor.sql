-- Read-only queries of the live views: `jobsys top` and `jobsys exporter`.
-- Each block starts with "-- name: <query_name>" and a one-line description.

-- name: monitor_active_jobs
-- Every active job with its counters, its rate over the last minute or two,
-- its age and the reconciler's latest finding: all `jobsys top` needs per
-- refresh, in one statement. Counters come from the jobs row (never a count
-- over job_tasks); the rate from the per-minute rollup (job_minutes), over
-- the previous and the current minute, from the job's start at the earliest;
-- the finding through reconcile_findings_job_idx (job_id, id DESC). %(limit)s
-- NULL means all; `active` is how many there are in all (partial index jobs_active_idx).
-- `waits_for_retry`: a started job whose every pending task waits for its next
-- delivery after a transient failure (as the waits_for_retry query judges it for
-- `jobsys status`); looked at for started jobs only.
SELECT j.id,
       j.name,
       j.pipeline,
       j.status,
       j.priority,
       j.weight,
       j.total_count AS total,
       j.done_count AS done,
       j.failed_count AS failed,
       j.lost_count AS lost,
       j.cancelled_count AS cancelled,
       extract(epoch FROM now() - j.created_at)::float8 AS age_s,
       r.finished AS recent_finished,
       greatest(extract(epoch FROM now() - greatest(date_trunc('minute', now()) - interval '1 minute',
                                                     coalesce(j.started_at, j.created_at))), 1
       )::float8 AS recent_s,
       f.kind AS finding,
       f.action AS finding_action,
       f.at AS finding_at,
       w.waits AS waits_for_retry,
       (SELECT count(*) FROM jobs a WHERE a.status IN ('queued', 'started', 'canceling')) AS active
-- The limit applies before the per-job lookups: only shown jobs cost them.
FROM (
    SELECT * FROM jobs
    WHERE status IN ('queued', 'started', 'canceling')
    ORDER BY id
    LIMIT %(limit)s
) j
CROSS JOIN LATERAL (
    SELECT coalesce(sum(m.done + m.failed + m.lost), 0)::bigint AS finished
    FROM job_minutes m
    WHERE m.job_id = j.id AND m.minute >= date_trunc('minute', now()) - interval '1 minute'
) r
LEFT JOIN LATERAL (
    SELECT rf.kind, rf.action, rf.at
    FROM reconcile_findings rf
    WHERE rf.job_id = j.id
    ORDER BY rf.id DESC
    LIMIT 1
) f ON true
CROSS JOIN LATERAL (
    SELECT CASE
             WHEN j.status <> 'started' THEN false
             WHEN EXISTS (SELECT 1 FROM job_tasks t
                          WHERE t.job_id = j.id AND t.status = 'pending'
                            AND (t.next_attempt_at IS NULL OR t.next_attempt_at <= now()))
             THEN false
             ELSE EXISTS (SELECT 1 FROM job_tasks t
                          WHERE t.job_id = j.id AND t.status = 'pending'
                            AND t.next_attempt_at > now())
           END AS waits
) w
ORDER BY j.id;

-- name: monitor_jobs_by_status
-- How many jobs are in each status (the exporter's jobsys_jobs gauge).
SELECT status, count(*) AS jobs FROM jobs GROUP BY status;

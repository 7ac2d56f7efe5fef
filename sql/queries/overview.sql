-- Read-only queries of the web console (`jobsys serve`, jobsys/server/console/):
-- the jobs list, the live snapshot every open page shares, a job's progress
-- over time, its events newest first, one task in full.
-- Each block starts with "-- name: <query_name>" and a one-line description.
--
-- The job rows are read as `j.*` on purpose: columns added to `jobs` later
-- (a job's priority and weight) reach the console without a change here, and
-- the console shows them when they are there.

-- name: overview_jobs
-- A page of recent jobs, newest first: optionally of one status (or 'active'
-- for queued, started and canceling), whose name contains %(search)s (any
-- case) or whose id it is, of some pipelines only, below id %(before)s (the
-- next page: keyset paging, stable while jobs come and go). Each with its
-- number of retries and its rate over the last minute or two (job_minutes,
-- as `jobsys top`). The limit applies before the per-job lookups.
SELECT j.*,
       (SELECT count(*) FROM jobs c WHERE c.parent_id = j.id) AS children,
       r.finished AS recent_finished,
       greatest(extract(epoch FROM now() - greatest(date_trunc('minute', now()) - interval '1 minute',
                                                     coalesce(j.started_at, j.created_at))), 1
       )::float8 AS recent_s
FROM (
    SELECT * FROM jobs
    WHERE (%(status)s::text IS NULL
           OR status = %(status)s::text
           OR (%(status)s::text = 'active' AND status IN ('queued', 'started', 'canceling')))
      AND (%(search)s::text IS NULL
           OR strpos(lower(name), lower(%(search)s::text)) > 0
           OR id::text = %(search)s::text)
      AND (%(pipelines)s::text[] IS NULL OR pipeline = ANY(%(pipelines)s::text[]))
      AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
    ORDER BY id DESC
    LIMIT %(limit)s
) j
CROSS JOIN LATERAL (
    SELECT coalesce(sum(m.done + m.failed + m.lost), 0)::bigint AS finished
    FROM job_minutes m
    WHERE m.job_id = j.id AND m.minute >= date_trunc('minute', now()) - interval '1 minute'
) r
ORDER BY j.id DESC;

-- name: overview_live
-- What every open console page is sent each refresh, in one statement
-- however many pages are open: every active job (partial index
-- jobs_active_idx) and every job that finished in the last %(recent_s)s
-- seconds (partial index jobs_prunable_idx, whose predicate this repeats),
-- with counters and the rate over the last minute or two.
SELECT j.*,
       r.finished AS recent_finished,
       greatest(extract(epoch FROM now() - greatest(date_trunc('minute', now()) - interval '1 minute',
                                                     coalesce(j.started_at, j.created_at))), 1
       )::float8 AS recent_s
FROM (
    SELECT * FROM jobs WHERE status IN ('queued', 'started', 'canceling')
    UNION ALL
    SELECT * FROM jobs
    WHERE status IN ('success', 'failure', 'revoked') AND ledger_state <> 'pruned'
      AND finished_at > now() - make_interval(secs => %(recent_s)s)
) j
CROSS JOIN LATERAL (
    SELECT coalesce(sum(m.done + m.failed + m.lost), 0)::bigint AS finished
    FROM job_minutes m
    WHERE m.job_id = j.id AND m.minute >= date_trunc('minute', now()) - interval '1 minute'
) r
ORDER BY j.id;

-- name: overview_one_job
-- One job as the console shows it: its row, its number of retries, its rate.
SELECT j.*,
       (SELECT count(*) FROM jobs c WHERE c.parent_id = j.id) AS children,
       r.finished AS recent_finished,
       greatest(extract(epoch FROM now() - greatest(date_trunc('minute', now()) - interval '1 minute',
                                                     coalesce(j.started_at, j.created_at))), 1
       )::float8 AS recent_s
FROM jobs j
CROSS JOIN LATERAL (
    SELECT coalesce(sum(m.done + m.failed + m.lost), 0)::bigint AS finished
    FROM job_minutes m
    WHERE m.job_id = j.id AND m.minute >= date_trunc('minute', now()) - interval '1 minute'
) r
WHERE j.id = %(job_id)s;

-- name: overview_minutes
-- A job's tasks finished per minute (the rollup the result path keeps), oldest
-- first, from %(since)s on (primary key job_id, minute): its progress over time.
SELECT minute, done, failed, lost
FROM job_minutes
WHERE job_id = %(job_id)s AND minute >= %(since)s
ORDER BY minute;

-- name: overview_minutes_before
-- A job's tasks finished before %(since)s (what the chart's first point starts from).
SELECT coalesce(sum(done), 0)::bigint AS done, coalesce(sum(failed), 0)::bigint AS failed,
       coalesce(sum(lost), 0)::bigint AS lost
FROM job_minutes
WHERE job_id = %(job_id)s AND minute < %(since)s;

-- name: overview_events
-- A job's events newest first, below id %(before)s when given, or above
-- %(after)s (follow mode: what came since the newest one shown); index
-- job_events_job_idx (job_id, id).
SELECT id, at, level, event, detail
FROM job_events
WHERE job_id = %(job_id)s
  AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
  AND id > %(after)s::bigint
ORDER BY id DESC
LIMIT %(limit)s;

-- name: overview_task
-- One task in full: its ledger row (every column, so the console shows what
-- later migrations add, such as an exception type and traceback) and its
-- payload and result as the text stored.
SELECT t.*, t.payload::text AS payload_text, t.result::text AS result_text,
       t.error_trace AS traceback
FROM job_tasks t
WHERE t.job_id = %(job_id)s AND t.task_no = %(task_no)s;

-- 003: dashboard views for psql users, the per-minute throughput rollup that
-- feeds their rates, and the read-only role `jobsys_reader`.
--
-- Every view is cheap enough for `\watch 2` on a big ledger: counts come
-- from the jobs row's counter columns, never count(*) over job_tasks, and
-- rates come from a small per-minute rollup, never from scanning finished_at.
-- Thresholds a view needs are session settings with defaults, so psql users
-- can change them without editing SQL:
--   SET jobsys.stuck_after = '10 minutes';   -- stuck_jobs (default 2 minutes)

-- -- Throughput rollup ---------------------------------------------------------
--
-- Why a rollup and not an index on job_tasks (job_id, finished_at)
-- (measured by bench/views.py, `python -m bench.views`, 100 jobs / 1M tasks,
-- two full runs on a shared 2-core machine):
-- * The read side: "tasks finished in the last 5 minutes" through that index
--   is an index scan over every task finished in the window, for every job,
--   on every refresh: 250 ms after a burst of a million results, against
--   1-4 ms for the whole job_overview on the rollup.
-- * The write side: an index on finished_at makes every result UPDATE of the
--   ledger (pending -> done sets finished_at) non-HOT (0% HOT against ~20%
--   without it): each task's update writes a new entry into the primary key
--   AND the new index and leaves dead index entries for vacuum. Result
--   throughput (record_results, batches of 100, 4 clients) cost of the index:
--   -10% and +28% in the two runs; cost of the rollup trigger: -9% and +9%,
--   i.e. within the noise of the machine.
-- The rollup is one row per job and minute, maintained by a trigger on the
-- jobs row: the counters there already change once per result batch by SQL
-- arithmetic (in the batch's transaction, under that row's lock), so the
-- trigger adds one small upsert per batch, not per task, and takes no new
-- lock order (the jobs row is always locked first). The rollup row's update
-- touches no indexed column, so it stays HOT. Deltas are recorded as they
-- come; a counter repair by the reconciler may record a negative delta, which
-- the views clamp at zero.

CREATE TABLE job_minutes (
    job_id  bigint NOT NULL,
    minute  timestamptz NOT NULL,
    done    integer NOT NULL DEFAULT 0,
    failed  integer NOT NULL DEFAULT 0,
    lost    integer NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, minute)
) WITH (fillfactor = 70);

-- The overall throughput (all jobs, last hour) reads by minute.
CREATE INDEX job_minutes_minute_idx ON job_minutes (minute);

CREATE FUNCTION job_minutes_count() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_minutes AS m (job_id, minute, done, failed, lost)
    VALUES (NEW.id, date_trunc('minute', now()),
            NEW.done_count - OLD.done_count,
            NEW.failed_count - OLD.failed_count,
            NEW.lost_count - OLD.lost_count)
    ON CONFLICT (job_id, minute) DO UPDATE
    SET done = m.done + EXCLUDED.done,
        failed = m.failed + EXCLUDED.failed,
        lost = m.lost + EXCLUDED.lost;
    RETURN NULL;
END;
$$;

-- The WHEN clause is evaluated without calling the function, so the other
-- updates of a job row (status moves, published_count) cost nothing.
CREATE TRIGGER jobs_count_minutes
AFTER UPDATE OF done_count, failed_count, lost_count ON jobs
FOR EACH ROW
WHEN (NEW.done_count <> OLD.done_count
      OR NEW.failed_count <> OLD.failed_count
      OR NEW.lost_count <> OLD.lost_count)
EXECUTE FUNCTION job_minutes_count();

-- -- Views ---------------------------------------------------------------------

-- Per job: counters, percent, rate over the last 5 minutes, ETA, age, idle time.
-- tasks_per_min = tasks finished (done + failed + lost) in the 5-minute
-- window divided by the minutes of that window the job was running (so a job
-- started 30 s ago is not shown at a tenth of its speed). The rollup is read
-- only for jobs that progressed in the window: finished jobs cost nothing.
CREATE VIEW job_overview AS
WITH win AS (
    SELECT now() AS now, date_trunc('minute', now()) - interval '4 minutes' AS since
)
SELECT j.id,
       j.name,
       j.pipeline,
       j.status,
       j.total_count AS total,
       j.done_count AS done,
       j.failed_count AS failed,
       j.lost_count AS lost,
       j.cancelled_count AS cancelled,
       c.pending,
       CASE WHEN j.total_count = 0 THEN 100.0
            ELSE round(100.0 * (j.total_count - c.pending) / j.total_count, 1)
       END AS percent,
       r.finished AS finished_5m,
       round(r.finished / s.minutes, 1) AS tasks_per_min,
       CASE WHEN j.status = 'started' AND r.finished > 0 THEN
           make_interval(secs => round(c.pending * s.minutes * 60 / r.finished))
       END AS eta,
       date_trunc('second', w.now - j.created_at) AS age,
       date_trunc('second', w.now - j.progress_at) AS idle,
       j.progress_at,
       j.created_at,
       j.started_at,
       j.finished_at
FROM jobs j
CROSS JOIN win w
CROSS JOIN LATERAL (
    SELECT greatest(j.total_count - j.done_count - j.failed_count - j.lost_count
                    - j.cancelled_count, 0) AS pending
) c
-- The minutes of the window the job was running: from the later of the
-- window start and the job's start, to now or the job's end; at least 1 s.
CROSS JOIN LATERAL (
    SELECT greatest(extract(epoch FROM least(w.now, coalesce(j.finished_at, w.now))
                                 - greatest(w.since, coalesce(j.started_at, j.created_at))),
                    1) / 60.0 AS minutes
) s
CROSS JOIN LATERAL (
    -- The progress_at test is a one-time filter: jobs idle for the whole
    -- window never touch the rollup.
    SELECT coalesce(greatest(sum(m.done + m.failed + m.lost), 0), 0) AS finished
    FROM job_minutes m
    WHERE m.job_id = j.id AND m.minute >= w.since AND j.progress_at >= w.since
) r;

COMMENT ON VIEW job_overview IS
    'Per job: counters, percent, tasks/min over the last 5 minutes, ETA, age, idle time.';

-- The active jobs, most recent progress first.
CREATE VIEW active_jobs AS
SELECT * FROM job_overview
WHERE status IN ('queued', 'started', 'canceling')
ORDER BY progress_at DESC, id DESC;

COMMENT ON VIEW active_jobs IS 'Queued, started and canceling jobs, most recent progress first.';

-- Active jobs idle past jobsys.stuck_after (default 2 minutes, the default
-- JOBSYS_LOST_AFTER_S), with the reconciler's latest finding on each.
CREATE VIEW stuck_jobs AS
SELECT o.id, o.name, o.pipeline, o.status, o.total, o.done, o.failed, o.lost, o.pending,
       o.percent, o.idle, o.age, o.progress_at,
       f.at AS finding_at, f.kind AS finding, f.action AS finding_action,
       f.detail AS finding_detail
FROM active_jobs o
LEFT JOIN LATERAL (
    SELECT rf.at, rf.kind, rf.action, rf.detail
    FROM reconcile_findings rf
    WHERE rf.job_id = o.id
    ORDER BY rf.id DESC
    LIMIT 1
) f ON true
WHERE o.progress_at < now() - coalesce(
    nullif(current_setting('jobsys.stuck_after', true), '')::interval, interval '2 minutes')
ORDER BY o.progress_at, o.id;

COMMENT ON VIEW stuck_jobs IS
    'Active jobs with no progress for jobsys.stuck_after (default 2 min) and the '
    'reconciler''s latest finding on each.';

-- Tasks finished per minute over the last hour: one row per job and minute
-- with activity, plus one row per minute for all jobs (job_id NULL), present
-- even for idle minutes so the series has no holes.
CREATE VIEW job_throughput AS
WITH minutes AS (
    SELECT generate_series(date_trunc('minute', now()) - interval '59 minutes',
                           date_trunc('minute', now()), interval '1 minute') AS minute
), per_job AS (
    SELECT m.minute, m.job_id,
           greatest(sum(m.done), 0) AS done,
           greatest(sum(m.failed), 0) AS failed,
           greatest(sum(m.lost), 0) AS lost
    FROM job_minutes m
    WHERE m.minute >= date_trunc('minute', now()) - interval '59 minutes'
    GROUP BY m.minute, m.job_id
)
SELECT p.minute, p.job_id, p.done, p.failed, p.lost, p.done + p.failed + p.lost AS finished
FROM per_job p
UNION ALL
SELECT mi.minute, NULL::bigint,
       coalesce(sum(p.done), 0), coalesce(sum(p.failed), 0), coalesce(sum(p.lost), 0),
       coalesce(sum(p.done + p.failed + p.lost), 0)
FROM minutes mi
LEFT JOIN per_job p ON p.minute = mi.minute
GROUP BY mi.minute;

COMMENT ON VIEW job_throughput IS
    'Tasks finished per minute over the last hour, per job and (job_id NULL) for all jobs.';

-- The most common error messages of each job's failed tasks, with a count
-- and an example task. Only jobs whose failed_count says they have failures
-- are read, each through the ledger's primary key (job_id prefix): there is
-- deliberately no index on job_tasks.status (see 001).
CREATE VIEW task_failures AS
SELECT j.id AS job_id, j.name, j.status, e.error, e.tasks, e.example_task, e.last_at,
       e.rank
FROM jobs j
CROSS JOIN LATERAL (
    SELECT g.*, row_number() OVER (ORDER BY g.tasks DESC, g.error) AS rank
    FROM (
        SELECT coalesce(t.error, '(no message)') AS error, count(*) AS tasks,
               min(t.task_no) AS example_task, max(t.finished_at) AS last_at
        FROM job_tasks t
        WHERE t.job_id = j.id AND t.status = 'failed'
        GROUP BY coalesce(t.error, '(no message)')
    ) g
) e
WHERE j.failed_count > 0;

COMMENT ON VIEW task_failures IS
    'Error messages of failed tasks per job: count, an example task, rank within the job.';

-- What the reconciler found and did over the last day, newest first.
CREATE VIEW reconcile_findings_recent AS
SELECT f.id, f.at, f.run_id, f.job_id, j.name, j.status AS job_status, f.kind, f.action,
       f.detail
FROM reconcile_findings f
LEFT JOIN jobs j ON j.id = f.job_id
WHERE f.at > now() - interval '1 day'
ORDER BY f.at DESC, f.id DESC;

COMMENT ON VIEW reconcile_findings_recent IS 'Reconciler findings and actions of the last day.';

-- The reconciler's passes over the last day, newest first.
CREATE VIEW reconcile_runs_recent AS
SELECT r.id, r.started_at, r.finished_at, r.finished_at - r.started_at AS took, r.trigger,
       r.jobs_checked, r.findings, r.detail
FROM reconcile_runs r
WHERE r.started_at > now() - interval '1 day'
ORDER BY r.started_at DESC, r.id DESC;

COMMENT ON VIEW reconcile_runs_recent IS 'Reconciler passes of the last day.';

-- -- Read-only role ------------------------------------------------------------
--
-- Roles are cluster-wide (every database of the cluster, and every test
-- database, shares them), so creation is guarded and a concurrent creation
-- by another database's migration is tolerated. NOLOGIN and no password: an
-- operator grants it to a login role (`GRANT jobsys_reader TO alice`). The
-- views run with their owner's rights, so the role reads the views and
-- nothing else: no table privilege is granted.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jobsys_reader') THEN
        CREATE ROLE jobsys_reader NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END;
$$;

GRANT SELECT ON job_overview, active_jobs, stuck_jobs, job_throughput, task_failures,
    reconcile_findings_recent, reconcile_runs_recent TO jobsys_reader;

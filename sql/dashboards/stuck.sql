-- jobsys dashboard: active jobs with no progress for a while, and what the
-- reconciler last found on each. Threshold: -v stuck_after='5 minutes'
-- (default 2 minutes).
--   psql "$JOBSYS_DATABASE_URL" -v stuck_after='5 minutes' -f sql/dashboards/stuck.sql
\set QUIET on
\pset null '-'
\pset footer off
\set ON_ERROR_STOP on
\if :{?stuck_after}
SET jobsys.stuck_after = :'stuck_after';
\endif
SELECT 'jobsys: jobs without progress for ' ||
       coalesce(nullif(current_setting('jobsys.stuck_after', true), ''), '2 minutes') AS title
\gset
\echo :title
SELECT id AS job, left(name, 24) AS name, status, done, failed, lost, pending,
       to_char(percent, 'FM990.0') || '%' AS progress, idle,
       finding, finding_action AS action, date_trunc('second', finding_at) AS finding_at
FROM stuck_jobs;

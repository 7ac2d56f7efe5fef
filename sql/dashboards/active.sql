-- jobsys dashboard: active jobs, most recent progress first, with a progress bar.
--   psql "$JOBSYS_DATABASE_URL" -f sql/dashboards/active.sql
\set QUIET on
\pset null '-'
\pset footer off
\set ON_ERROR_STOP on
\echo 'jobsys: active jobs'
SELECT id AS job, left(name, 24) AS name, pipeline, status,
       rpad(repeat('#', (percent / 5)::int), 20, '.') || ' '
           || to_char(percent, 'FM990.0') || '%' AS progress,
       done, failed, lost, pending, tasks_per_min AS "tasks/min", eta, idle
FROM active_jobs;

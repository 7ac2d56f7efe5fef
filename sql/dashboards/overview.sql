-- jobsys dashboard: the 30 most recent jobs with progress, rate and ETA.
--   psql "$JOBSYS_DATABASE_URL" -f sql/dashboards/overview.sql
--   watch -n 2 psql "$JOBSYS_DATABASE_URL" -f sql/dashboards/overview.sql
\set QUIET on
\pset null '-'
\pset footer off
\set ON_ERROR_STOP on
\echo 'jobsys: recent jobs'
SELECT id AS job, left(name, 24) AS name, pipeline, status,
       total, done, failed, lost, pending,
       to_char(percent, 'FM990.0') || '%' AS progress,
       tasks_per_min AS "tasks/min",
       eta, age, idle
FROM job_overview
ORDER BY id DESC
LIMIT 30;

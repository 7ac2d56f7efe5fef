-- jobsys dashboard: the 5 most common error messages of each job's failed
-- tasks (20 most recent jobs with failures), with counts and an example task.
--   psql "$JOBSYS_DATABASE_URL" -f sql/dashboards/failures.sql
\set QUIET on
\pset null '-'
\pset footer off
\set ON_ERROR_STOP on
\echo 'jobsys: task failures by error message'
SELECT job_id AS job, left(name, 20) AS name, status, tasks AS count,
       example_task, left(error, 70) AS error
FROM task_failures
WHERE rank <= 5
  AND job_id IN (SELECT DISTINCT job_id FROM task_failures ORDER BY job_id DESC LIMIT 20)
ORDER BY job_id DESC, rank;

-- jobsys dashboard: tasks finished per minute over the last hour, for all
-- jobs (a bar per minute) and per job (the hour's totals).
--   psql "$JOBSYS_DATABASE_URL" -f sql/dashboards/throughput.sql
\set QUIET on
\pset null '-'
\pset footer off
\set ON_ERROR_STOP on
\echo 'jobsys: tasks finished per minute, all jobs, last hour'
SELECT to_char(minute, 'HH24:MI') AS minute, finished, failed, lost,
       coalesce(repeat('#', (40 * finished / nullif(max(finished) OVER (), 0))::int), '') AS bar
FROM job_throughput
WHERE job_id IS NULL
ORDER BY minute;
\echo
\echo 'jobsys: per job, last hour'
SELECT job_id AS job, sum(finished) AS finished, sum(done) AS done, sum(failed) AS failed,
       sum(lost) AS lost, round(sum(finished) / 60.0, 1) AS "avg/min",
       max(finished) AS "peak/min", to_char(max(minute), 'HH24:MI') AS last_minute
FROM job_throughput
WHERE job_id IS NOT NULL
GROUP BY job_id
ORDER BY job_id DESC;

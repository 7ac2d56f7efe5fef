-- jobsys dashboard: the reconciler's recent passes and the 50 latest
-- findings (what it saw on which job and what it did).
--   psql "$JOBSYS_DATABASE_URL" -f sql/dashboards/reconcile.sql
\set QUIET on
\pset null '-'
\pset footer off
\set ON_ERROR_STOP on
\echo 'jobsys: reconciler passes (last 10)'
SELECT id AS pass, date_trunc('second', started_at) AS started, took, trigger,
       jobs_checked, findings
FROM reconcile_runs_recent
LIMIT 10;
\echo
\echo 'jobsys: reconciler findings (last 50)'
SELECT date_trunc('second', at) AS at, job_id AS job, job_status, kind, action,
       left(detail::text, 60) AS detail
FROM reconcile_findings_recent
LIMIT 50;

-- jobsys dashboard: the reconciler's recent passes and the 50 findings last
-- seen (what it saw on which job, what it did, and in how many passes).
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
\echo 'jobsys: reconciler findings (50 last seen; passes = how many passes saw it)'
SELECT date_trunc('second', at) AS last_seen, seen AS passes, job_id AS job, job_status,
       kind, action, left(coalesce(reason, detail::text), 60) AS reason
FROM reconcile_findings_recent
LIMIT 50;

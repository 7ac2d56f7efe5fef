-- 009: the dashboards' reader sees what the views show, and nothing more.
--
-- A view runs with its owner's rights, but a function in the caller's WHERE
-- clause may be evaluated before the view's own filter: a reader who can
-- create a cheap function (in pg_temp, which every role may use through the
-- TEMP privilege PUBLIC has by default) could make it see, and report, rows
-- the view hides. Two locks on that door:
-- * every view the reader may select is a security barrier, so the view's
--   filters run first (quals with leakproof operators, such as `id = 42`,
--   still reach the indexes);
-- * TEMP is revoked from PUBLIC on this database (granted back to the role
--   running the migrations), and CREATE on schema public too (already so
--   since Postgres 15), so the reader can create no function at all.
-- tests/test_reader_security.py checks every view granted to jobsys_reader.

ALTER VIEW job_overview SET (security_barrier = true);
ALTER VIEW active_jobs SET (security_barrier = true);
ALTER VIEW stuck_jobs SET (security_barrier = true);
ALTER VIEW job_throughput SET (security_barrier = true);
ALTER VIEW task_failures SET (security_barrier = true);
ALTER VIEW reconcile_findings_recent SET (security_barrier = true);
ALTER VIEW reconcile_runs_recent SET (security_barrier = true);

DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO %I', current_database(), current_user);
END;
$$;

REVOKE CREATE ON SCHEMA public FROM PUBLIC;

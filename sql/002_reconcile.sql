-- 002: what each reconciler pass saw and did.
--
-- One row per pass in reconcile_runs, one row per finding (a job that needed
-- attention, and what was done about it) in reconcile_findings, so psql can
-- show the reconciler's history and its latest word on any job.

CREATE TABLE reconcile_runs (
    id            bigserial PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    trigger       text NOT NULL DEFAULT 'actor',   -- 'actor' (scheduler) or 'cli' (cron)
    jobs_checked  integer NOT NULL DEFAULT 0,
    findings      integer NOT NULL DEFAULT 0,
    detail        jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE reconcile_findings (
    id      bigserial PRIMARY KEY,
    run_id  bigint REFERENCES reconcile_runs (id) ON DELETE CASCADE,
    job_id  bigint,
    at      timestamptz NOT NULL DEFAULT now(),
    kind    text NOT NULL,     -- e.g. counters_drift, tasks_exhausted, idle_lost, stream_missing
    action  text NOT NULL,     -- what was done, e.g. repaired, marked_lost, republished, none
    -- what the pass saw: DB counters, ledger counts, stream messages,
    -- num_pending, num_ack_pending, num_redelivered
    detail  jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX reconcile_findings_job_idx ON reconcile_findings (job_id, id DESC);
CREATE INDEX reconcile_findings_at_idx ON reconcile_findings (at DESC);

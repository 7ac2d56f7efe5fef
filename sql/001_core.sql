-- 001: jobs, the per-task ledger and the event log.
--
-- The job row carries counter columns updated with SQL arithmetic, never a
-- JSON progress blob; percentages are computed on read. The ledger
-- (job_tasks) is what makes result replays idempotent: a task moves out of
-- 'pending' once, and only rows that really moved are counted.

CREATE TABLE jobs (
    id                bigserial PRIMARY KEY,
    name              text NOT NULL DEFAULT '',
    pipeline          text NOT NULL,
    status            text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'started', 'canceling', 'success', 'failure', 'revoked')),
    total_count       integer NOT NULL CHECK (total_count >= 0),
    published_count   integer NOT NULL DEFAULT 0 CHECK (published_count >= 0),
    done_count        integer NOT NULL DEFAULT 0 CHECK (done_count >= 0),
    failed_count      integer NOT NULL DEFAULT 0 CHECK (failed_count >= 0),
    lost_count        integer NOT NULL DEFAULT 0 CHECK (lost_count >= 0),
    cancelled_count   integer NOT NULL DEFAULT 0 CHECK (cancelled_count >= 0),
    failure_threshold double precision NOT NULL DEFAULT 0
        CHECK (failure_threshold >= 0 AND failure_threshold <= 1),
    max_deliver       integer NOT NULL CHECK (max_deliver >= 1),
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    progress_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX jobs_active_idx ON jobs (status) WHERE status IN ('queued', 'started', 'canceling');
CREATE INDEX jobs_created_idx ON jobs (created_at DESC);

-- No foreign key to jobs: tasks are only ever inserted in the transaction
-- that creates their job, and an FK roughly doubles the COPY time of a
-- large submit. Payload and result are `json` (not jsonb) so they are stored
-- byte for byte as given, including \u0000 escapes that jsonb rejects.
CREATE TABLE job_tasks (
    job_id      bigint NOT NULL,
    task_no     integer NOT NULL CHECK (task_no >= 0),
    payload     json NOT NULL,
    status      text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'done', 'failed', 'lost', 'cancelled')),
    result      json,
    error       text,
    deliveries  integer NOT NULL DEFAULT 0,
    finished_at timestamptz,
    PRIMARY KEY (job_id, task_no)
) WITH (fillfactor = 80);
-- No index on status: it would make every pending -> done update non-HOT.
-- Per-job scans use the primary key's job_id prefix; free page space
-- (fillfactor) lets the result update stay on its page.

CREATE TABLE job_events (
    id      bigserial PRIMARY KEY,
    job_id  bigint,
    at      timestamptz NOT NULL DEFAULT now(),
    level   text NOT NULL DEFAULT 'info' CHECK (level IN ('debug', 'info', 'warning', 'error')),
    event   text NOT NULL,
    detail  jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX job_events_job_idx ON job_events (job_id, id);
CREATE INDEX job_events_event_idx ON job_events (event, id);

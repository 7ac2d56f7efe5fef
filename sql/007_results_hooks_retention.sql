-- 007: results out, failures back in (issue 15): retry lineage, completion
-- hooks (an outbox written by the final transition) and ledger retention.

-- -- Retry lineage ---------------------------------------------------------------
--
-- A retry is a new job whose tasks are some of a final job's tasks. The
-- parent is never changed (a final status is never left); the child points
-- at it, and at the first job of the chain (root_id, NULL for a root).
-- Each retried task remembers its task number in the root job
-- (origin_task), so `jobsys results ROOT --latest` can give every original
-- task's latest outcome across the chain.
ALTER TABLE jobs ADD COLUMN parent_id bigint REFERENCES jobs (id);
ALTER TABLE jobs ADD COLUMN root_id bigint REFERENCES jobs (id);
CREATE INDEX jobs_parent_idx ON jobs (parent_id) WHERE parent_id IS NOT NULL;

-- Nullable, no default: adding it rewrites nothing, and submit's COPY does
-- not name it. The partial index holds only retried tasks, and no result
-- update changes origin_task, so pending -> done updates stay HOT.
ALTER TABLE job_tasks ADD COLUMN origin_task integer CHECK (origin_task >= 0);
CREATE INDEX job_tasks_origin_idx ON job_tasks (job_id, origin_task)
    WHERE origin_task IS NOT NULL;

-- -- Completion hooks ------------------------------------------------------------
--
-- jobs.on_complete is the target given at submit: 'module:actor' or an
-- http(s) URL. job_hooks is the outbox: the guarded status transition that
-- makes a job final inserts its row in the same statement (see
-- transition_status in sql/queries/core.sql), so a job is final if and only
-- if its delivery is recorded, whichever path finalized it. The primary key
-- makes "one delivery per job" a fact of the schema.
--
-- state: pending (due at next_at) -> sending (claimed by one sender until
-- lease_until) -> delivered | failed (gave up after the stated attempts);
-- a failed attempt goes back to pending with a later next_at.
ALTER TABLE jobs ADD COLUMN on_complete text;

CREATE TABLE job_hooks (
    job_id        bigint PRIMARY KEY REFERENCES jobs (id),
    target        text NOT NULL,
    state         text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'sending', 'delivered', 'failed')),
    attempts      integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    next_at       timestamptz NOT NULL DEFAULT now(),
    lease_until   timestamptz,
    delivered_at  timestamptz,
    last_error    text
);

-- The reconciler's look for work: only undelivered rows are in the index.
CREATE INDEX job_hooks_due_idx ON job_hooks (next_at) WHERE state IN ('pending', 'sending');

-- -- Retention ---------------------------------------------------------------------
--
-- kept -> pruning (the ledger and events are being deleted, in chunks) ->
-- pruned. The job row stays, with its counters, and says when its ledger
-- went. Exports and retries read ledger_state first and refuse a job that
-- is not 'kept'.
ALTER TABLE jobs ADD COLUMN ledger_state text NOT NULL DEFAULT 'kept'
    CHECK (ledger_state IN ('kept', 'pruning', 'pruned'));
ALTER TABLE jobs ADD COLUMN ledger_pruned_at timestamptz;

-- The retention duty's look for work: final jobs not yet pruned, oldest first.
CREATE INDEX jobs_prunable_idx ON jobs (finished_at)
    WHERE ledger_state <> 'pruned' AND status IN ('success', 'failure', 'revoked');
